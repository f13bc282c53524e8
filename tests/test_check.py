"""The greedy agreement check through the CLI: stored with each run, shown in compare."""

import json

from tests.helpers import cli, rows


def test_check_llamacpp_against_hf_is_stored_per_run(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("check", "--engines", "llama.cpp", "--quant", "f32,q4_0", "--prompts", "4", "--tokens", "16",
               "--min-agreement", "1.0", db=db)
    assert proc.returncode == 1, proc.stderr  # q4_0 drifts from the fp32 reference
    assert "llama.cpp f32: 100.0% tokens identical" in proc.stdout
    stored = {label: (value, json.loads(d)) for label, value, d in rows(
        db, "select run.label, quality.value, quality.details from quality join run on run.id = quality.run_id "
            "where metric='agreement'")}
    assert stored["llama.cpp f32"][0] == 1.0
    assert stored["llama.cpp q4_0"][0] < 1.0
    assert stored["llama.cpp f32"][1]["reference"].startswith("hf-generate fp32")
    cmp = cli("compare", "last", "last~1", db=db, check=True).stdout
    assert "agreement" in cmp


def test_run_option_check_stores_agreement(tmp_path):
    db = tmp_path / "runs.db"
    cli("run", "--engine", "hf-pipeline", "--batch", "1", "--input-len", "16", "--output-len", "4", "--warmup", "0",
        "--iters", "1", "--repeats", "1", "--check", db=db, check=True)
    ((value,),) = rows(db, "select value from quality where metric='agreement'")
    assert value == 1.0  # the same fp32 model through the pipeline decodes the same tokens


def test_check_with_unknown_engine_is_bad_input(tmp_path):
    proc = cli("check", "--engines", "nope", db=tmp_path / "r.db")
    assert proc.returncode == 2 and "unknown engine 'nope'" in proc.stderr
    assert not (tmp_path / "r.db").exists()
