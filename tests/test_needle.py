"""The needle workload: a fact planted at a depth of a stdlib haystack, the question at the end, and scoring."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engines.base import SpecError
from engines.models.needle import KEY, needle_examples, needle_prompts
from engines.models.prompt_sources import prompts_for
from engines.models.tiny import tokenizer_path
from engines.models.workloads import load_tokenizer, round_trips
from engines.quality.workload_scores import found_value, score_cell

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_file(tiny_model):
    return tokenizer_path(tiny_model)


@pytest.mark.parametrize("length", [128, 256, 1000, 4096])
@pytest.mark.parametrize("depth", [0, 10, 25, 50, 75, 99, 100])
def test_fact_sits_at_the_requested_depth(tok_file, length, depth):
    tok = load_tokenizer(tok_file)
    examples = needle_examples(tok_file, 2, length, depth, 3)
    assert len({e.value for e in examples}) == 2
    for e in examples:
        ids = list(e.ids)
        assert len(ids) == length and round_trips(tok, ids)
        # the needle's first token is depth % of the way through the haystack's tokens (±1 % of the prompt)
        assert abs(e.needle_at - depth / 100 * e.haystack) <= 0.01 * length
        assert abs(e.depth - depth) <= 100 / e.haystack + 1e-9
        planted = tok.decode(ids[e.needle_at :])
        assert planted.lstrip(" ").startswith(f"{KEY} = {e.value}\n")
        before = tok.decode(ids[: e.needle_at])
        assert before == "" or before.rstrip(" ").endswith("\n")  # at a line start
        text = tok.decode(ids)
        assert text.count(KEY) == 3 and text.endswith(f"# Answer: {KEY} =")  # fact, question, answer prompt


def test_same_seed_same_prompts_and_worker_entry_agrees(tok_file):
    a = needle_prompts(tok_file, 2, 300, 40, 7)
    assert needle_prompts(tok_file, 2, 300, 40, 7) == a != needle_prompts(tok_file, 2, 300, 40, 8)
    assert prompts_for(tok_file, {"kind": "needle"}, 2, 300, 7, {"depth": 40}) == a


def test_too_short_a_context_is_refused(tok_file):
    with pytest.raises(SpecError, match="--context >="):
        needle_prompts(tok_file, 1, 24, 50, 0)


def test_found_value_on_known_answers():
    assert found_value(" 48213\n", 48213) and found_value(" = 48213 # the value", 48213)
    assert not found_value(" 482134", 48213) and not found_value(" 148213", 48213)
    assert not found_value(" 4821", 48213) and not found_value("", 48213)


def test_score_cell_counts_the_right_answers(tok_file):
    tok = load_tokenizer(tok_file)
    examples = needle_examples(tok_file, 3, 256, 50, 0)
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    tokens = [enc(f" {examples[0].value}\n"), enc(f" {examples[1].value + 1}\n"), enc(" None\n")]
    got = score_cell(str(tok_file), {"kind": "needle"}, 3, 256, 0, {"depth": 50}, tokens)["needle"]
    assert got["hits"] == 1 and got["n"] == 3 and got["accuracy"] == pytest.approx(1 / 3)
    assert got["context"] == 256 and got["depth"] == 50 and abs(got["depth_actual"] - 50) <= 1


@pytest.mark.parametrize("args,message", [
    (["--workload", "needle", "--context", "256", "--depth", "0:50:25,101"], "depth: 101 is above 100"),
    (["--workload", "needle", "--context", "256", "--depth", "-1"], "depth: -1 is below 0"),
    (["--workload", "needle", "--context", "256", "--depth", "half"], "is not an integer"),
    (["--depth", "50"], "--depth needs --workload needle"),
    (["--context", "256"], "--context is the needle workload's length axis"),
    (["--workload", "needle", "--context", "256", "--input-len", "256"], "same axis"),
])  # fmt: skip
def test_bad_needle_arguments_exit_2_with_one_line(tmp_path, args, message):
    db = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, "-m", "tui.cli", "--db", str(db), "run", "--model", "tiny", *args],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    lines = [x for x in (out.stdout + out.stderr).splitlines() if x.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stdout + out.stderr
    assert not db.exists()


def test_needle_run_end_to_end_stores_accuracy_per_context_and_depth(tmp_path):
    db = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, "-m", "tui.cli", "--db", str(db), "run", "--model", "tiny", "--workload",
                          "needle", "--context", "128:257:x2", "--depth", "0:101:50", "--output-len", "4",
                          "--warmup", "0", "--iters", "1", "--repeats", "1", "--quiet"],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = sqlite3.connect(db).execute("select input_len, params, status, metrics from cell").fetchall()
    got = {(n, json.loads(p)["depth"]): (s, json.loads(m)["needle"]) for n, p, s, m in rows}
    assert sorted(got) == [(n, d) for n in (128, 256) for d in (0, 50, 100)]
    for (n, d), (status, needle) in got.items():
        assert status == "done" and needle["context"] == n and needle["depth"] == d and needle["n"] == 1
        assert needle["accuracy"] in (0.0, 1.0) and abs(needle["depth_actual"] - d) <= 1
