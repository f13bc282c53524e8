"""Speculative decoding: spec parsing, acceptance arithmetic, greedy identity on tiny, the study through the CLI."""

from __future__ import annotations

import hashlib
import json

import pytest

from engines.base import SpecError
from engines.study.speculation import (
    acceptance_rate,
    cell_metrics,
    mean_accepted_len,
    parse_spec,
    reference_match,
    spec_allowed,  # fmt: skip
)
from tests.helpers import FAST, cli, rows

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two threads on a shared 2-core box make timings erratic


@pytest.mark.parametrize("value, text", [("none", "none"), ("ngram=4", "ngram=4"), (" ngram = 7 ", "ngram=7"),
                                         ("draft=tiny-draft", "draft=tiny-draft"), ("draft=org/m", "draft=org/m")])  # fmt: skip
def test_parse_spec(value, text):
    assert str(parse_spec(value)) == text


@pytest.mark.parametrize("value, fragment", [("ngram=x", "integer 1..64"), ("ngram=0", "integer 1..64"),
                                             ("draft=", "names no draft"), ("eagle=3", "unknown spec")])  # fmt: skip
def test_parse_spec_errors(value, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_spec(value)


def test_spec_patterns_and_expand_adds_the_matched_baseline_first():
    from engines.registry import expand

    assert spec_allowed("ngram=12", ("none", "ngram=N")) and not spec_allowed("draft=x", ("none", "ngram=N"))
    runs = expand(["hf-generate"], spec=["draft=tiny-draft", "ngram=4"])
    assert [r.spec for r in runs] == ["none", "draft=tiny-draft", "ngram=4"]
    assert all(reference_match(r, runs[0]) for r in runs[1:]) and not reference_match(runs[0], runs[0])
    assert [r.spec for r in expand(["hf-generate"])] == [None]  # no --spec: plain runs stay plain
    with pytest.raises(SpecError, match="unknown spec 'ngram=4' for hf-pipeline"):
        expand(["hf-pipeline"], spec=["ngram=4"])


def test_acceptance_arithmetic():
    assert acceptance_rate(3, 4) == 0.75 and acceptance_rate(0, 0) is None
    with pytest.raises(ValueError):
        acceptance_rate(5, 4)
    assert mean_accepted_len(6, 4) == 1.5 and mean_accepted_len(0, 0) is None
    extras = [  # two minibatches of 2 sequences x 10 tokens: accepted + steps = 20 each
        {"spec_method": "ngram", "spec_draft_tokens": 16, "spec_accepted_tokens": 12, "spec_drafts": 5, "spec_steps": 8,
         "time_draft_s": 0.1, "time_verify_s": 0.5, "time_total_s": 0.8},
        {"spec_method": "ngram", "spec_draft_tokens": 8, "spec_accepted_tokens": 6, "spec_drafts": 3, "spec_steps": 14,
         "time_draft_s": 0.3, "time_verify_s": 0.7, "time_total_s": 1.2},
    ]  # fmt: skip
    m = cell_metrics(extras, batch=2, output_len=10)
    spec, bd = m["speculative"], m["breakdown"]
    assert (spec["proposed"], spec["accepted"], spec["drafts"], spec["steps"]) == (24, 18, 8, 22)
    assert spec["acceptance_rate"] == pytest.approx(0.75)  # pooled, not the mean of 0.75 and 0.75 by luck
    assert spec["mean_accepted_len"] == pytest.approx(18 / 8)
    assert spec["tokens_per_step"] == pytest.approx(40 / 22)
    assert (bd["draft_s"], bd["verify_s"], bd["total_s"]) == pytest.approx((0.2, 0.6, 1.0))
    assert bd["other_s"] == pytest.approx(0.2)
    assert bd["verify_ms_per_token"] == pytest.approx(0.6 / 20 * 1000)
    assert cell_metrics([{}], 1, 1) == {}


@pytest.fixture(scope="module")
def engines(codebench_cache):
    from engines.adapters.hf.speculative import HFSpeculative
    from engines.models.tiny import ensure_tiny

    path = str(ensure_tiny())
    made = {}
    for spec in ("none", "ngram=3", "draft=tiny-draft", "draft=tiny"):
        e = HFSpeculative({"engine": "hf-generate", "precision": "fp32", "attention": "sdpa", "spec": spec,
                           "options": {"draft_tokens": 4}})  # fmt: skip
        e.load(path, "cpu")
        made[spec] = e
    return made


def test_speculative_greedy_output_is_token_identical_and_counts_add_up(engines):
    from engines.models.tiny import ensure_tiny
    from engines.models.workloads import synthetic_prompts

    prompts = synthetic_prompts(ensure_tiny() / "tokenizer.json", 2, 48, 3)
    n = 24
    base = engines["none"].generate(prompts, n)
    assert base.extra["spec_steps"] == n and base.extra["time_verify_s"] > 0 and base.extra["sequential"] is False
    for spec in ("ngram=3", "draft=tiny-draft", "draft=tiny"):
        res = engines[spec].generate(prompts, n)
        assert res.tokens == base.tokens, spec  # lossless
        x = res.extra
        assert x["sequential"] is True and 0 <= x["spec_accepted_tokens"] <= x["spec_draft_tokens"]
        # Every verify step yields its accepted draft tokens plus one of the target's own.
        assert x["spec_accepted_tokens"] + x["spec_steps"] == len(prompts) * n, spec
        assert x["time_draft_s"] > 0 and x["time_verify_s"] > 0 and x["time_total_s"] >= x["time_draft_s"] + x["time_verify_s"]
    self_draft = engines["draft=tiny"].generate(prompts, n).extra
    assert self_draft["spec_accepted_tokens"] == self_draft["spec_draft_tokens"] > 0  # the target drafting for itself
    assert engines["draft=tiny-draft"].assistant.config.num_hidden_layers == 1


def test_tiny_draft_is_deterministic_and_pinned(tmp_path):
    from engines.models.tiny import TINY_DRAFT_WEIGHTS_SHA256, draft_problems, ensure_tiny_draft

    a, b = ensure_tiny_draft(tmp_path / "a"), ensure_tiny_draft(tmp_path / "b")
    for d in (a, b):
        assert hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() == TINY_DRAFT_WEIGHTS_SHA256
        assert draft_problems(d) == []
    assert json.loads((a / "config.json").read_text())["hidden_size"] == 128
    (a / "model.safetensors").write_bytes(b"broken")
    assert draft_problems(a) == ["model.safetensors damaged"]
    assert ensure_tiny_draft(tmp_path / "a") == a and draft_problems(a) == []


@pytest.fixture(scope="module")
def spec_study(tmp_path_factory):
    db = tmp_path_factory.mktemp("spec") / "runs.db"
    proc = cli("run", "--spec", "ngram=4", "--batch", "1", "--input-len", "48", "--output-len", "24", *FAST,
               db=db, env=ONE_THREAD, check=True)  # fmt: skip
    return db, proc


def test_spec_study_adds_the_baseline_and_stores_speedup_and_identity(spec_study):
    db, proc = spec_study
    runs = rows(db, "select label, config from run order by created_at")
    assert [json.loads(c)["spec"] for _, c in runs] == ["none", "ngram=4"]
    (metrics,) = rows(db, "select metrics from cell where run_id=(select id from run order by created_at desc limit 1)")
    m = json.loads(metrics[0])
    spec, ref, bd = m["speculative"], m["reference"], m["breakdown"]
    assert ref["identical"] is True and ref["speedup"] > 0 and ref["label"].endswith("spec=none")
    assert 0 <= spec["acceptance_rate"] <= 1 and spec["accepted"] + spec["steps"] == 2 * 24  # 2 timed minibatches
    assert bd["verify_ms_per_token"] > 0 and ref["breakdown"]["draft_ms_per_token"] == 0
    assert "speculative decoding" in proc.stdout and "time per generated token by phase" in proc.stdout


def test_replay_draws_the_breakdown_and_the_speedup_chart(spec_study):
    db, _ = spec_study
    out = cli("--replay", "last", "--headless", db=db, env={"COLUMNS": "160"}, check=True).stdout
    assert "speculative decoding on code (stdlib source)" in out
    assert "time per generated token by phase" in out and "verify forward" in out and "draft" in out
    assert "speed-up over the matched run vs acceptance rate" in out
    assert "none b=1 in=48 out=24" in out and "ngram=4 b=1 in=48 out=24" in out  # both bars of seed 004's figure
    assert "yes" in out  # same tokens


@pytest.mark.parametrize("args, fragment", [
    (["--spec", "ngram=x"], "integer 1..64"),
    (["--spec", "draft=./no/such/model"], "does not exist"),
    (["--engine", "hf-pipeline", "--spec", "ngram=4"], "unknown spec 'ngram=4'"),
    (["--spec", "ngram=4", "--opt", "draft_tokens=0"], "draft_tokens must be an integer 1..64"),
    (["--spec", "ngram=4", "--opt", "cache=static"], None),
])  # fmt: skip
def test_bad_spec_input(tmp_path, args, fragment):
    if fragment is None:  # only the engine can tell: the run fails with the reason, the baseline runs
        proc = cli("run", *args, "--batch", "1", "--input-len", "8", "--output-len", "2", *FAST, db=tmp_path / "r.db",
                   env=ONE_THREAD)  # fmt: skip
        got = rows(tmp_path / "r.db", "select status, error from run order by created_at")
        assert got[0][0] == "done" and got[1][0] == "failed" and "dynamic KV cache" in got[1][1]
        return
    proc = cli("run", *args, "--dry-run", db=tmp_path / "r.db")
    assert proc.returncode == 2 and fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_vllm_gets_ngram_speculation_through_its_own_options():
    from engines.registry import expand, get

    runs = expand(["vllm"], spec=["ngram=4"])
    assert [r.spec for r in runs] == ["none", "ngram=4"]
    assert get("vllm").speculation_options(parse_spec("ngram=4")) == {"ngram_tokens": 4}
    assert get("vllm").speculation_options(parse_spec("none")) == {}
    with pytest.raises(SpecError, match="unknown spec 'draft=tiny-draft' for vllm"):
        expand(["vllm"], spec=["draft=tiny-draft"])
    assert [r.spec for r in expand(["llama.cpp"], spec=["ngram=4", "draft=tiny-draft"])] == [  # tests/test_llamacpp_spec.py
        "none", "ngram=4", "draft=tiny-draft"]  # fmt: skip
    # spec_options merges into the adapter's options only in the worker; the stored config keeps spec as given
    cfg = runs[1].model_dump()
    assert cfg["spec"] == "ngram=4" and cfg["options"] == {}
