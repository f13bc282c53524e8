"""Quality through the real CLI: stored with the run, shown in replay and compare, exported."""

import json

import pytest

from tests.helpers import cli, rows


def test_eval_perplexity_equals_direct_transformers_computation(tmp_path, tiny_model):
    db = tmp_path / "runs.db"
    cli("eval", "--metric", "perplexity", "--corpus", "stdlib:2", "--window", "128", "--stride", "64", db=db, check=True)
    ((value, details),) = rows(db, "select value, details from quality where metric='perplexity'")
    details = json.loads(details)
    import torch

    from engines.quality.perplexity import evaluate_hf, load_corpus

    torch.set_num_threads(1)
    direct = evaluate_hf(tiny_model, load_corpus("stdlib:2"), window=128, stride=64)
    assert details["tokens"] == direct.tokens
    assert value == pytest.approx(direct.ppl, rel=1e-4)
    out = cli("--replay", "last", "--headless", db=db, check=True).stdout
    assert "perplexity" in out


def test_run_with_quality_stores_pass_at_1_and_exports_it(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--batch", "1", "--input-len", "16", "--output-len", "4", "--warmup", "0", "--iters", "1",
               "--repeats", "1", "--quality", "pass@k", "--problems", "3", "--max-new-tokens", "24", db=db)
    assert proc.returncode == 0, proc.stderr
    ((metric, value, details),) = rows(db, "select metric, value, details from quality")
    assert metric == "pass@1" and value == 0.0  # random weights write no working code
    details = json.loads(details)
    assert details["problems"] == 3 and sum(details["outcomes"].values()) == 3
    md = cli("export", "last", "--format", "md", db=db, check=True).stdout
    assert "pass@1" in md
    js = json.loads(cli("export", "last", "--format", "json", db=db, check=True).stdout)
    assert js["runs"][0]["quality"][0]["metric"] == "pass@1"


@pytest.mark.slow
def test_full_humaneval_run_of_tiny_finishes(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("eval", "--metric", "pass@k", "--max-new-tokens", "32", db=db, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    ((value, details),) = rows(db, "select value, details from quality where metric='pass@1'")
    assert value == 0.0 and json.loads(details)["problems"] == 164


def test_scoring_a_completions_file(tmp_path):
    from engines.quality.humaneval import load_problems

    probs = list(load_problems().values())[:5]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n" for p in probs))
    out = cli("eval", "--completions", str(good), check=True).stdout
    assert "pass@1 = 1.0000" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n')
    proc = cli("eval", "--completions", str(bad))
    assert proc.returncode == 2 and f"{bad}:2:" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, fragment", [
    (["--metric", "pass@k", "--k", "1,10"], "pass@10 needs at least 10 samples"),
    (["--metric", "pass@k", "--samples", "4"], "--temperature > 0"),
    (["--metric", "perplexity", "--corpus", "/nope/corpus.txt"], "/nope/corpus.txt"),
    (["--metric", "perplexity", "--window", "8", "--stride", "16"], "larger than --window"),
    (["--metric", "bleu"], "unknown quality metric 'bleu'"),
])
def test_bad_quality_input(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    proc = cli("eval", *args, db=db)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not db.exists()
