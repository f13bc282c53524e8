"""The llama.cpp adapter on tiny: real batching, HF agreement, perf counters, bad input, the runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.adapters.llamacpp.engine import LlamaCpp, parse_options
from engines.base import SpecError
from engines.models.workloads import synthetic_prompts
from engines.quality.agreement import format_line, summary

QUANTS = ("f32", "q8_0", "q4_0")
_engines: dict[str, LlamaCpp] = {}


@pytest.fixture(scope="module")
def engine(tiny_model):
    """One loaded adapter per quant, shared by the module (loading converts and quantizes once)."""

    def get(quant: str) -> LlamaCpp:
        if quant not in _engines:
            eng = LlamaCpp({"quant": quant, "options": {"n_threads": 1}})
            eng.load(str(tiny_model), "cpu")
            _engines[quant] = eng
        return _engines[quant]

    yield get
    for eng in _engines.values():
        eng.unload()
    _engines.clear()


@pytest.fixture(scope="module")
def prompts8(tiny_model) -> list[list[int]]:
    return synthetic_prompts(tiny_model / "tokenizer.json", 8, 32, seed=0)


@pytest.fixture(scope="module")
def hf_tokens(tiny_model, prompts8) -> list[list[int]]:
    from engines.adapters.hf.engine import HFGenerate

    hf = HFGenerate({"precision": "fp32", "attention": "sdpa", "options": {}})
    hf.load(str(tiny_model), "cpu")
    try:
        return hf.generate(prompts8, 32).tokens
    finally:
        hf.unload()


@pytest.mark.parametrize("quant", QUANTS)
def test_batch_of_four_gives_exact_counts_and_one_clock(engine, prompts8, quant):
    import time

    eng = engine(quant)
    t0 = time.perf_counter()
    res = eng.generate(prompts8[:4], 16)
    elapsed = time.perf_counter() - t0
    assert [len(t) for t in res.tokens] == [16] * 4
    x = res.extra
    # TTFT and decode time are wall clock, split at the first token: they add up to the call's wall time.
    assert res.ttft_s == x["prefill_s"] and res.ttft_s + x["decode_s"] == pytest.approx(x["wall_s"])
    assert x["wall_s"] < elapsed
    assert x["decode_tokens_per_s"] == pytest.approx(4 * 15 / x["decode_s"])
    assert len(res.step_times_s) == 15 and sum(res.step_times_s) == pytest.approx(x["decode_s"])
    # llama.cpp's own timers count only its compute, so the wall clock strictly covers them.
    assert 0 < x["perf_prefill_s"] < res.ttft_s and 0 < x["perf_decode_s"] < x["decode_s"]
    assert 0 < x["perf_over_wall"] < 1, x
    # llama.cpp counted every prompt token once and 15 decode steps of 4 (as "prompt": >1 token each)
    assert x["perf_n_p_eval"] == 4 * 32 + 4 * 15
    one = eng.generate(prompts8[:1], 16).extra
    assert (one["perf_n_p_eval"], one["perf_n_eval"]) == (32, 15)
    # most of a call is llama.cpp's compute; the better of two calls, as one preemption outside it can halve one
    assert 0 < one["perf_over_wall"] < 1 and max(x["perf_over_wall"], one["perf_over_wall"]) > 0.3, (x, one)


def _reference_greedy(eng: LlamaCpp, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy decoding written against llama-cpp-python's API alone: its own llama_batch, llama.cpp's greedy
    sampler on llama_get_logits_ith; only the adapter's model and context are shared."""
    import llama_cpp as ll

    batch = ll.llama_batch_init(sum(map(len, prompts)), 0, 1)
    smpl = ll.llama_sampler_init_greedy()
    try:
        ll.llama_memory_clear(ll.llama_get_memory(eng.ctx), True)
        k, last = 0, []
        for s, p in enumerate(prompts):
            for i, t in enumerate(p):
                batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = t, i, 1, i == len(p) - 1
                batch.seq_id[k][0] = s
                k += 1
            last.append(k - 1)
        batch.n_tokens = k
        out: list[list[int]] = [[] for _ in prompts]
        for step in range(n):
            assert ll.llama_decode(eng.ctx, batch) == 0
            for s, idx in enumerate(last):
                out[s].append(ll.llama_sampler_sample(smpl, eng.ctx, idx))
            for s, p in enumerate(prompts):
                batch.token[s], batch.pos[s], batch.n_seq_id[s], batch.logits[s] = out[s][-1], len(p) + step, 1, 1
                batch.seq_id[s][0] = s
            batch.n_tokens, last = len(prompts), list(range(len(prompts)))
        return out
    finally:
        ll.llama_sampler_free(smpl)
        ll.llama_batch_free(batch)


@pytest.mark.parametrize("quant", QUANTS)
def test_greedy_path_equals_llama_cpp_greedy_sampler(engine, prompts8, quant):
    """The adapter's decode loop (kept logits view, numpy argmax into preallocated rows) picks llama.cpp's
    greedy tokens, at batch 3 and then at batch 1 (the view is rebuilt for another row count)."""
    eng = engine(quant)
    prompts = [prompts8[0][:9], prompts8[1], prompts8[2][:20]]
    assert eng.generate(prompts, 24).tokens == _reference_greedy(eng, prompts, 24)
    assert eng.generate(prompts[1:2], 24).tokens == _reference_greedy(eng, prompts[1:2], 24)


@pytest.mark.parametrize("quant", QUANTS)
def test_batched_equals_one_by_one(engine, prompts8, quant):
    eng = engine(quant)
    batched = eng.generate(prompts8[:4], 24).tokens
    single = [eng.generate([p], 24).tokens[0] for p in prompts8[:4]]
    assert batched == single


def test_f32_agrees_100_percent_with_hf_fp32(engine, prompts8, hf_tokens):
    got = engine("f32").generate(prompts8, 32).tokens
    s = summary(hf_tokens, got)
    assert s["token_agreement"] == 1.0, format_line("llama.cpp f32", s)
    assert s["first_divergence"] == [None] * 8


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_drift_is_reported(engine, prompts8, hf_tokens, quant, capsys):
    s = summary(hf_tokens, engine(quant).generate(prompts8, 32).tokens)
    assert s["prompts"] == 8 and s["tokens"] == 256
    assert 0.0 <= s["token_agreement"] <= 1.0
    assert len(s["first_divergence"]) == 8
    # q8_0 keeps the first greedy token nearly everywhere on tiny; a broken quantizer would not.
    firsts = [d for d in s["first_divergence"] if d is not None]
    assert sum(d == 0 for d in firsts) <= (1 if quant == "q8_0" else 4), s["first_divergence"]
    with capsys.disabled():
        print("\n" + format_line(f"llama.cpp {quant} vs hf fp32", s))


def test_logprobs_match_hf_at_f32(engine, tiny_model, prompts8):
    """Perplexity of a GGUF level: llama.cpp log-probs at F32 equal HF fp32's (the quality path)."""
    import math

    from engines.adapters.hf.engine import HFGenerate

    window = prompts8[0] + prompts8[1]
    hf = HFGenerate({"precision": "fp32", "attention": "sdpa", "options": {}})
    hf.load(str(tiny_model), "cpu")
    try:
        want = hf.logprobs(window, 16)
    finally:
        hf.unload()
    exact = LlamaCpp({"quant": "f32", "options": {"n_threads": 1, "type_k": "f32", "type_v": "f32", "flash_attn": "off"}})
    exact.load(str(tiny_model), "cpu")
    try:
        tight = exact.logprobs(window, 16)
    finally:
        exact.unload()
    got = engine("f32").logprobs(window, 16)
    assert len(got) == len(tight) == len(want) == len(window) - 16
    assert max(abs(a - b) for a, b in zip(tight, want)) < 1e-4  # F32 all the way
    # llama.cpp's defaults (F16 KV cache, flash attention) round through F16: 5.2e-3 on an AVX512-FP16 Xeon.
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-2
    q4 = engine("q4_0").logprobs(window, 16)
    assert math.exp(-sum(q4) / len(q4)) != math.exp(-sum(got) / len(got))


def test_kv_cache_is_cleared_between_calls(engine, prompts8):
    eng = engine("f32")
    first = eng.generate(prompts8[:2], 12).tokens
    eng.generate(prompts8[2:7], 20)  # more sequences, other text
    assert eng.generate(prompts8[:2], 12).tokens == first


def test_mixed_prompt_lengths_and_small_n_batch(tiny_model, prompts8):
    """Prompts of different lengths, prefill split over several llama_batches, context growth."""
    eng = LlamaCpp({"quant": "f32", "options": {"n_threads": 1, "n_batch": 16}})
    eng.load(str(tiny_model), "cpu")
    try:
        prompts = [prompts8[0][:5], prompts8[1], prompts8[2][:19]]
        batched = eng.generate(prompts, 10).tokens
        assert batched == [eng.generate([p], 10).tokens[0] for p in prompts]
        long = synthetic_prompts(tiny_model / "tokenizer.json", 2, 300, seed=1)
        res = eng.generate(long, 4)  # grows past the first context
        assert [len(t) for t in res.tokens] == [4, 4] and res.extra["n_ctx"] >= 3 * 304  # 3 sequences held
    finally:
        eng.unload()


def test_fixed_n_ctx_too_small_is_a_clear_error(tiny_model, prompts8):
    eng = LlamaCpp({"quant": "f32", "options": {"n_threads": 1, "n_ctx": 256}})
    eng.load(str(tiny_model), "cpu")
    try:
        assert [len(t) for t in eng.generate(prompts8[:4], 8).tokens] == [8] * 4  # 4 x 40 fits in 4 x 64
        with pytest.raises(SpecError, match="raise n_ctx to at least"):
            eng.generate(prompts8[:8], 8)  # 8 x 40 does not fit 8 x 32
    finally:
        eng.unload()


def test_user_gguf_file_is_used_as_is(tiny_model, engine):
    path = Path(engine("q8_0").gguf_path)
    eng = LlamaCpp({"quant": None, "options": {"n_threads": 1}})
    info = eng.load(str(path), "cpu")
    try:
        assert info.dtype == "q8_0" and info.extra["gguf"] == str(path)
        assert eng.generate([[5, 6, 7]], 3).tokens == engine("q8_0").generate([[5, 6, 7]], 3).tokens
    finally:
        eng.unload()


def test_corrupt_gguf_is_a_clear_error(tmp_path, engine):
    blob = Path(engine("f32").gguf_path).read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(SpecError, match="truncated"):
        LlamaCpp({"options": {}}).load(str(bad), "cpu")


@pytest.mark.parametrize(
    "options,device,match",
    [
        ({"n_gpu_layers": 4}, "cpu", "needs --device cuda"),
        ({"bogus": 1}, "cpu", "no option bogus"),
        ({"n_threads": 0}, "cpu", "whole number from 1"),
        ({"n_batch": 1 << 40}, "cpu", "whole number from 1 to"),
        ({"kv_unified": "off"}, "cpu", "kv_unified must be true or false"),
        ({"flash_attn": "maybe"}, "cpu", "on, off or auto"),
        ({"type_k": "q2_k"}, "cpu", "type_k must be one of"),
        ({"type_v": "q8_0", "flash_attn": "off"}, "cpu", "quantized V cache"),
        ({"threadpool": "\x1b[31mmine"}, "cpu", "threadpool must be attached or per-graph"),
    ],
)
def test_bad_options(options, device, match):
    with pytest.raises(SpecError, match=match):
        parse_options(options, device)


def test_attached_threadpool_is_the_default_and_changes_no_token(tiny_model, prompts8):
    """As llama.cpp's own tools do, each context gets a persistent CPU threadpool (two when n_threads_batch differs);
    per-graph is llama-cpp-python's disposable pool per step. Same tokens either way; contexts regrow their pools."""
    runs = {}
    for pool, extra in (("attached", {}), ("per-graph", {}), ("attached", {"n_threads_batch": 2})):
        eng = LlamaCpp({"quant": "q8_0", "options": {"n_threads": 1, "threadpool": pool, **extra}})
        info = eng.load(str(tiny_model), "cpu")
        try:
            assert info.extra["threadpool"] == pool
            pools = eng._pools
            assert (pools is not None and pools.attached and len(pools.pools) == (2 if extra else 1)) == (pool == "attached")
            runs[(pool, bool(extra))] = eng.generate(prompts8[:4], 8).tokens
            long = synthetic_prompts(tiny_model / "tokenizer.json", 4, 300, seed=1)
            eng.generate(long, 2)  # a bigger context: the old pools are detached and freed first
            assert (eng._pools is not pools) == (pool == "attached")
        finally:
            eng.unload()
        assert eng._pools is None
    assert runs[("attached", False)] == runs[("per-graph", False)] == runs[("attached", True)]


def test_kv_cache_type_and_flash_attention_options_run(tiny_model, prompts8):
    eng = LlamaCpp({"quant": "f32", "options": {"n_threads": 1, "flash_attn": "on", "type_k": "q8_0", "type_v": "q8_0"}})
    eng.load(str(tiny_model), "cpu")
    try:
        assert [len(t) for t in eng.generate(prompts8[:3], 8).tokens] == [8, 8, 8]
    finally:
        eng.unload()


def test_registry_rules_without_importing_llama_cpp():
    from engines.registry import check, expand

    runs = expand(["llama.cpp"], quant=["f32", "q4_k_m"])
    assert [r.quant for r in runs] == ["f32", "q4_k_m"]
    assert check(runs[0], "cpu").ok
    gpu_layers = runs[0].model_copy(update={"options": {"n_gpu_layers": 10}})
    assert not check(gpu_layers, "cpu").ok
    with pytest.raises(SpecError, match="unknown quant 'q7'"):
        expand(["llama.cpp"], quant=["q7"])


# --- through the real CLI and worker processes ---------------------------------------------


def test_cli_sweep_f32_q8_q4_with_batch_over_one(tmp_path):
    import json

    from tests.helpers import FAST, cli, rows

    db = tmp_path / "runs.db"
    cli("run", "--model", "tiny", "--engine", "llama.cpp", "--quant", "f32,q8_0,q4_0", "--batch", "1,4",
        "--input-len", "16", "--output-len", "8", "--opt", "n_threads=1", *FAST, db=db, check=True)  # fmt: skip
    runs = rows(db, "select id, label, status, runtime from run order by created_at")
    assert [(r[1], r[2]) for r in runs] == [
        ("llama.cpp f32 n_threads=1", "done"), ("llama.cpp q8_0 n_threads=1", "done"), ("llama.cpp q4_0 n_threads=1", "done")
    ]  # fmt: skip
    for run_id, label, _, runtime in runs:
        rt = json.loads(runtime)
        assert rt["dtype"] == label.split()[1] and rt["gguf"].endswith(f"-{rt['dtype']}.gguf")
        # llama.cpp runs 2-3 % slower in a process holding numpy (bindings.py): prompts come from a child instead
        assert rt["numpy_in_worker"] is False and rt["decode_loop"] == "c"
        assert [json.loads(m)["numpy_in_worker"] for (m,) in rows(db, "select metrics from cell where run_id=?",
                                                                  run_id)] == [False, False]  # fmt: skip
        cells = rows(db, "select batch, status, repeats from cell where run_id=? order by idx", run_id)
        assert [(c[0], c[1]) for c in cells] == [(1, "done"), (4, "done")]
        cells = rows(db, "select batch, repeats, latency_s, ttft_s, decode_tps from cell where run_id=? order by idx",
                     run_id)  # fmt: skip
        shares = []
        for batch, reps, latency, ttft, decode_tps in cells:
            for rep in json.loads(reps):
                assert rep["tokens"] == [batch * 8]
                (x,) = rep["extra"]
                # TTFT is the engine's wall clock, like the runner's latency, and within it
                assert rep["ttft_s"] == [x["prefill_s"]] and x["perf_prefill_s"] < x["prefill_s"]
                assert rep["ttft_s"][0] < rep["latencies_s"][0] and x["wall_s"] < rep["latencies_s"][0]
                assert 0 < x["perf_over_wall"] < 1
                shares.append(x["perf_over_wall"])
            assert 0 < ttft < latency and decode_tps == pytest.approx(batch * 7 / (latency - ttft))
        assert max(shares) > 0.3, shares  # most of a call is llama.cpp's compute (one preemption can halve a call's)


def test_cli_corrupt_gguf_is_refused_before_any_worker(tmp_path, engine):
    from tests.helpers import FAST, cli

    blob = Path(engine("f32").gguf_path).read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(blob[: len(blob) // 2])
    db = tmp_path / "runs.db"
    proc = cli("run", "--model", str(bad), "--engine", "llama.cpp", "--batch", "1", "--input-len", "8",
               "--output-len", "4", *FAST, db=db)  # fmt: skip
    assert proc.returncode == 2 and "truncated" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not db.exists()  # one line, nothing written


def test_cli_crash_inside_the_worker_is_contained(tmp_path):
    """A llama.cpp abort kills the worker process; the runner records `crashed` and resumes."""
    from tests.helpers import FAST, cell_statuses, cli

    db = tmp_path / "runs.db"
    cli("run", "--model", "tiny", "--engine", "llama.cpp", "--batch", "1,2", "--input-len", "8", "--output-len", "4",
        "--opt", "n_threads=1", *FAST, db=db, env={"CODEBENCH_FAULT": "segv:0"}, check=True)  # fmt: skip
    assert [s[3] for s in cell_statuses(db)] == ["crashed", "done"]


def test_check_command_f32_agrees_fully_quantized_drift(capsys, tmp_path):
    """`codebench-tui check --json` with real workers: hf fp32 vs llama.cpp."""
    import json

    from tui.cli import main

    code = main(["check", "--model", "tiny", "--engines", "llama.cpp", "--quant", "f32,q4_0", "--device", "cpu",
                 "--json", "--min-agreement", "1.0", "--db", str(tmp_path / "runs.db")])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["reference"].startswith("hf-generate fp32 sdpa")
    f32, q4 = doc["results"]["llama.cpp f32"], doc["results"]["llama.cpp q4_0"]
    assert f32["token_agreement"] == 1.0 and f32["prompts"] == 8 and f32["tokens"] == 256
    assert q4["token_agreement"] < 1.0 and q4["first_divergence_min"] is not None
    assert code == 1  # q4_0 is below --min-agreement 1.0


def test_threadpool_choice_is_part_of_the_environment_compare_diffs():
    from store.envdiff import environment

    attached = environment({"runtime": {"n_threads": 2, "threadpool": "attached"}})
    per_graph = environment({"runtime": {"n_threads": 2, "threadpool": "per-graph"}})
    assert attached["llama.cpp threadpool"] == "attached" and per_graph["llama.cpp threadpool"] == "per-graph"
    assert "llama.cpp threadpool" not in environment({"runtime": {"n_threads": 2}})  # runs stored before
