"""A/A and A/B studies on the tiny model through the real CLI: `compare` and the exports say which ratios
are noise. Real worker processes, real timings on whatever else this machine is doing.

Workers run one thread each (OMP_NUM_THREADS=1, llama.cpp n_threads=1), as the README advises for a
shared machine: two threads on two busy cores stall at every barrier and make single repeats 100x slower.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from tests.helpers import cli, rows

pytestmark = pytest.mark.slow
TIMING = ["--warmup", "1", "--iters", "1", "--repeats", "4"]  # an even number of rounds: each run leads in half
WIDE = {"COLUMNS": "220"}  # rich must not wrap a ratio across lines
RATIO = re.compile(r"(≈?)(\d+\.\d+)× \((\d+\.\d+)–(\d+\.\d+)\)")


def verdicts(db, ids: list[str]) -> dict[int, dict]:
    """Per batch: what `compare`, the CSV export and the JSON export say about the second run over the first."""
    out = cli("compare", *ids, "--no-chart", db=db, env=WIDE, check=True).stdout
    by_batch: dict[int, dict] = {}
    for line in out.splitlines():
        m = RATIO.search(line)
        if m:
            batch = int(line.strip("│┃ ").split()[0])
            by_batch[batch] = {"shown_same": m.group(1) == "≈", "shown": float(m.group(2))}
    csv_rows = list(csv.DictReader(io.StringIO(cli("export", *ids, "--format", "csv", db=db, check=True).stdout)))
    for r in csv_rows:
        if r["run_id"] == ids[1]:
            by_batch[int(r["batch"])].update(csv_significant=r["significant"], csv_ratio=float(r["ratio"]))
        else:
            assert r["ratio"] == "" and r["significant"] == ""  # the baseline's own rows
    doc = json.loads(cli("export", *ids, "--format", "json", db=db, check=True).stdout)
    for c in doc["comparison"]["cells"]:
        if c["metric"] == "tokens_per_s":
            by_batch[c["batch"]].update(json=c)
    for v in by_batch.values():  # one verdict, three views
        assert v["csv_significant"] == ("true" if v["json"]["significant"] else "false")
        assert v["shown_same"] == (not v["json"]["significant"])
        assert v["shown"] == pytest.approx(v["csv_ratio"], abs=0.006) and v["json"]["method"] == "paired"
    summary = next(n for n in doc["comparison"]["notes"] if " vs baseline: " in n)
    assert " ".join(summary.split()) in " ".join(out.split())  # the terminal says it too (rich wraps it)
    by_batch["summary"] = summary
    return by_batch


def test_aa_study_is_called_noise(tiny_model, tmp_path):
    """The same configuration twice: each cell's interval should contain 1. A correct 95% interval still
    excludes it for about one cell in twenty, so one cell of the three may; two would point at a bias."""
    db = tmp_path / "aa.db"
    run = cli("run", "--model", "tiny", "--engine", "hf-generate,hf-generate", "--batch", "1,2,4",
              "--input-len", "32", "--output-len", "16", *TIMING, "--worker-env", "OMP_NUM_THREADS=1",
              db=db, env=WIDE, check=True)  # fmt: skip
    ids = [r[0] for r in rows(db, "select id from run order by created_at")]
    assert len(ids) == 2 and "× base (95% CI)" in run.stdout
    assert [json.loads(r[0]).get("schedule") for r in rows(db, "select runtime from run")] == ["interleaved"] * 2
    v = verdicts(db, ids)
    cells = {b: x for b, x in v.items() if b != "summary"}
    assert sorted(cells) == [1, 2, 4]
    significant = [b for b, x in cells.items() if x["json"]["significant"]]
    assert len(significant) <= 1, f"an A/A pair called different in {significant}: {cells}"
    for b, x in cells.items():
        if b not in significant:
            assert x["csv_significant"] == "false" and x["shown_same"]
            assert x["json"]["ratio_ci_low"] <= 1 <= x["json"]["ratio_ci_high"] or "noise floor" in x["json"]["reason"]
    assert ("no cell of 3 differs significantly" in v["summary"]) == (not significant)


def test_ab_study_with_a_real_difference_is_called_significant(tiny_model, tmp_path):
    """hf-generate against llama.cpp F32 on one thread each: about 4x at batch 1 and 2.4x at batch 2 on a
    2-core CPU, quiet or busy (transformers' per-token Python overhead against llama.cpp's C++ loop)."""
    pytest.importorskip("llama_cpp")
    study = {"model": "tiny", "runs": [{"engine": "hf-generate", "precision": "fp32"},
                                       {"engine": "llama.cpp", "quant": "f32", "options": {"n_threads": 1}}],
             "grid": {"batch": [1, 2], "input_len": [32], "output_len": [16]},
             "timing": {"warmup": 1, "iters": 1, "repeats": 4}, "worker_env": {"OMP_NUM_THREADS": "1"}}  # fmt: skip
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(study))
    db = tmp_path / "ab.db"
    cli("run", "--study", str(path), db=db, env=WIDE, check=True)
    ids = [r[0] for r in rows(db, "select id from run order by created_at")]
    v = verdicts(db, ids)
    for b in (1, 2):
        x = v[b]
        assert x["json"]["significant"] and not x["shown_same"] and x["csv_significant"] == "true", x
        assert x["json"]["ratio"] > 1.3 and x["json"]["ratio_ci_low"] > 1, x
    assert "2 of 2 cells differ significantly (2 faster, 0 slower)" in v["summary"]
