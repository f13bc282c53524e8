"""Hydragen attention against standard attention: the kernel alone, the whole tiny model, and the microbenchmark."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")  # the hf extra; CI installs it

from engines.adapters.hf import hydragen  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

TOL = 1e-3  # the bound for fp32; the kernels agree to ~1e-6


def _problem(n, h, hkv, p, u, lq, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return mk(n, h, lq, d), mk(1, hkv, p, d), mk(1, hkv, p, d), mk(n, hkv, u, d), mk(n, hkv, u, d)


@pytest.mark.parametrize("n, h, hkv, p, u, lq", [
    (4, 8, 8, 100, 1, 1),    # a decode step, MHA
    (5, 8, 2, 64, 9, 1),     # a decode step, GQA (4 query heads per KV head)
    (3, 4, 2, 37, 6, 6),     # the suffix prefill: causal over the suffix, full over the prefix
    (2, 4, 4, 16, 7, 3),     # queries that are the last 3 of 7 suffix tokens (bottom-right causal, fallback)
    (6, 4, 1, 50, 0, 1),     # no suffix at all: the prefix part alone (MQA)
    (1, 2, 2, 1, 1, 1),      # smallest case
])  # fmt: skip
def test_hydragen_matches_standard_attention(n, h, hkv, p, u, lq):
    d = 16
    q, pk, pv, sk, sv = _problem(n, h, hkv, p, u, lq, d)
    k = torch.cat([pk.expand(n, -1, -1, -1), sk], dim=2)
    v = torch.cat([pv.expand(n, -1, -1, -1), sv], dim=2)
    ref = hydragen.standard_attention(q, k, v, d**-0.5)
    got = hydragen.hydragen_attention(q, sk, sv, (pk, pv), d**-0.5, h // hkv)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < TOL


@pytest.mark.parametrize("h, hkv", [(8, 8), (8, 2)])
def test_static_suffix_cache_matches_standard_attention_step_by_step(h, hkv, monkeypatch):
    """Suffix prefill then decode steps through the preallocated cache: the eager path (slices of the
    cache, flash kernels) and the graph's path (device-side slot, slots up to the bucket's end read, the rest masked)."""
    monkeypatch.setattr(hydragen, "DECODE_BUCKET", 4)  # 9 slots: read ends 8, 8, 9, 9 over the decode steps
    n, p, u, steps, d = 3, 29, 5, 4, 16
    q_all, pk, pv, sk, sv = _problem(n, h, hkv, p, u + steps, u + steps, d, seed=3)
    state = hydragen.HydragenPrefix([(pk, pv)])
    state.allocate(n, u + steps)
    assert state.graphs is None  # CPU: no CUDA graphs, the same maths eagerly
    full = lambda a, b, end: torch.cat([a.expand(n, -1, -1, -1), b[:, :, :end]], 2)  # noqa: E731
    for start, lq in [(0, u)] + [(u + i, 1) for i in range(steps)]:
        end = start + lq
        q = q_all[:, :, start:end]
        ref = hydragen.standard_attention(q, full(pk, sk, end), full(pv, sv, end), d**-0.5)
        state.begin(start)
        if lq == 1:  # the decode step as a CUDA graph runs it, here eagerly
            assert state.slot.tolist() == [start] and state.bias[: start + 1].eq(0).all() and state.bias[end:].eq(-torch.inf).all()
            assert state.read_end() == min(u + steps, -(-end // 4) * 4)
            for read in (state.read_end(), None):  # the bucket's read, and every slot
                got = hydragen.static_decode(state, 0, q, sk[:, :, start:end], sv[:, :, start:end], d**-0.5, read)
                assert (got - ref).abs().max().item() < 1e-5
            state.suffix[0][0][:, :, start:end] = 0  # written again below by the eager path
        k, v = state.write(0, sk[:, :, start:end], sv[:, :, start:end])
        assert k.shape[2] == end and k.data_ptr() == state.suffix[0][0].data_ptr()  # a view, no copy
        got = hydragen.hydragen_attention(q, k, v, (pk, pv), d**-0.5, h // hkv)
        assert (got - ref).abs().max().item() < 1e-5
    state.begin(u + steps)  # one token past the cache
    with pytest.raises(RuntimeError, match="suffix cache holds 3 x 9 tokens; this call needs 3 x 10"):
        state.write(0, sk[:, :, :1], sv[:, :, :1])


def test_masked_suffix_attention_ignores_unfilled_slots():
    """Slots past the filled one hold other finite numbers (zeros from allocate); they must not leak in."""
    q, _, _, k, v = _problem(2, 4, 2, 1, 6, 1, 8, seed=4)
    bias = torch.tensor([0.0, 0.0, 0.0, -torch.inf, -torch.inf, -torch.inf])  # the step at slot 2
    out, lse = hydragen.masked_suffix_attention(q, k, v, bias, 0.5)
    want_out, want_lse = hydragen.attention_with_lse(q, *(t[:, :, :3].repeat_interleave(2, 1) for t in (k, v)), 0.5)
    assert (out - want_out).abs().max() < 1e-5 and (lse - want_lse).abs().max() < 1e-5
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 3:], v2[:, :, 3:] = 1e4, -3e4
    out2, _ = hydragen.masked_suffix_attention(q, k2, v2, bias, 0.5)
    assert torch.isfinite(out2).all() and torch.allclose(out2, out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_decode_graphs_replay_the_same_attention_on_cuda(dtype, tol, monkeypatch):
    monkeypatch.setattr(hydragen, "DECODE_BUCKET", 4)  # 11 slots: steps at slots 6..10 read 8, 8, 11, 11, 11
    n, h, hkv, p, u, steps, d = 4, 8, 2, 300, 6, 5, 64
    q_all, pk, pv, sk, sv = (t.to("cuda", dtype) for t in _problem(n, h, hkv, p, u + steps, u + steps, d, seed=5))
    state = hydragen.HydragenPrefix([(pk, pv)])
    state.allocate(n, u + steps, graphs=True)
    full = lambda a, b, end: torch.cat([a.expand(n, -1, -1, -1), b[:, :, :end]], 2)  # noqa: E731
    state.begin(0)
    k, v = state.write(0, sk[:, :, :u], sv[:, :, :u])  # the suffix prefill runs eagerly
    hydragen.hydragen_attention(q_all[:, :, :u], k, v, (pk, pv), d**-0.5, h // hkv)
    with torch.inference_mode():
        for start in range(u, u + steps):
            state.begin(start)
            q = q_all[:, :, start : start + 1]
            got = state.graphs.run(state, 0, q, sk[:, :, start : start + 1], sv[:, :, start : start + 1], d**-0.5)
            assert got is not None, state.graphs.error
            ref = hydragen.standard_attention(q, full(pk, sk, start + 1), full(pv, sv, start + 1), d**-0.5)
            assert got.dtype == dtype and (got.float() - ref.float()).abs().max().item() < tol
    assert sorted(state.graphs.entries) == [(0, 8), (0, 11)] and state.graphs.error is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hydragen_engine_with_decode_graphs_keeps_the_tokens_on_cuda(tiny_prompts):
    from engines.adapters.hf.engine import HFGenerate
    from engines.adapters.hf.shared_prefix import Hydragen

    path, prompts = tiny_prompts
    mk = lambda cls, **o: cls({"engine": cls.name, "precision": "fp32", "attention": None, "quant": None,  # noqa: E731
                               "options": o})  # fmt: skip
    hyd, eager, base = mk(Hydragen), mk(Hydragen), mk(HFGenerate)
    eager.graphs = False
    for e in (hyd, eager, base):
        e.load(path, "cuda")
    res = hyd.generate(prompts, 12)
    assert res.extra["hydragen_decode"] == "cuda graphs x 4 layers x 1 read lengths, static cache", res.extra
    assert res.tokens == eager.generate(prompts, 12).tokens == base.generate(prompts, 12).tokens


def test_lse_kernels_agree_with_the_definition():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 11, 11))
    scores = q @ k.transpose(-1, -2) * 0.3
    for causal in (False, True):
        s = scores.masked_fill(torch.ones(5, 11, dtype=torch.bool).tril(6).logical_not(), float("-inf")) if causal else scores
        want_out, want_lse = torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
        for out, lse in (hydragen.attention_with_lse(q, k, v, 0.3, causal), hydragen._math_lse(q, k, v, 0.3, causal)):
            assert (out - want_out).abs().max() < 1e-5 and (lse - want_lse).abs().max() < 1e-5


def test_self_check_reports_a_small_difference():
    assert hydragen.self_check(torch.device("cpu"), torch.float32) < 1e-5
    assert hydragen.self_check(torch.device("cpu"), torch.bfloat16) < 5e-2  # bf16 rounding, not a bug


@pytest.fixture(scope="module")
def tiny_prompts(codebench_cache):
    from engines.models.prompt_sources import shared_prefix_prompts
    from engines.models.tiny import ensure_tiny

    path = ensure_tiny()
    return str(path), shared_prefix_prompts(path / "tokenizer.json", 3, 40, 6, seed=1)


def _engine(cls, path, **options):
    e = cls({"engine": cls.name, "precision": "fp32", "attention": None, "quant": None, "options": options})
    e.load(path, "cpu")
    return e


def test_static_suffix_cache_equals_the_dynamic_cache_path(tiny_prompts):
    """The preallocated suffix cache (default) against HF's DynamicCache (the old path): same logits, same tokens."""
    from transformers import DynamicCache

    from engines.adapters.hf.shared_prefix import Hydragen, common_prefix_len

    path, prompts = tiny_prompts
    static, dynamic = _engine(Hydragen, path), _engine(Hydragen, path, cache="dynamic")
    assert static.opts["cache"] == "static" and dynamic.opts["cache"] == "dynamic"
    p = common_prefix_len(prompts)
    ids = torch.tensor(prompts)
    model = static.model
    with torch.inference_mode():
        pc = DynamicCache(config=model.config)
        model(input_ids=ids[:1, :p], past_key_values=pc)
        layers = [(layer.keys, layer.values) for layer in pc.layers]
        logits = {}
        for name in ("static", "dynamic"):
            state = hydragen.HydragenPrefix(list(layers))
            cache = DynamicCache(config=model.config) if name == "dynamic" else None
            if name == "static":
                state.allocate(len(prompts), ids.shape[1] - p + 2)
            steps, nxt = [], None
            for start, x in ((p, ids[:, p:]), (ids.shape[1], None)):  # the suffix prefill, then one decode step
                x = nxt[:, None] if x is None else x
                if state.suffix:
                    state.begin(start - p)
                pos = torch.arange(start, start + x.shape[1])[None, :]
                out = model(input_ids=x, position_ids=pos, past_key_values=cache, use_cache=cache is not None,
                            hydragen_prefix=state).logits  # fmt: skip
                nxt = out[:, -1].argmax(-1)
                steps.append(out)
            logits[name] = torch.cat(steps, 1)
    assert (logits["static"] - logits["dynamic"]).abs().max().item() < 1e-5
    a, b = static.generate(prompts, 10), dynamic.generate(prompts, 10)
    assert a.tokens == b.tokens
    assert (a.extra["hydragen_decode"], b.extra["hydragen_decode"]) == ("eager, static cache", "eager, cache=dynamic")


def test_shared_prefix_engines_check_the_cache_option(tiny_prompts):
    from engines.adapters.hf.shared_prefix import Hydragen, NoAttention
    from engines.base import SpecError

    path, _ = tiny_prompts
    with pytest.raises(SpecError, match="hydragen has no option|cache must be dynamic or static"):
        _engine(Hydragen, path, cache="paged")
    with pytest.raises(SpecError, match=r"noattention runs its own decode loop; leave out --opt cache/compile"):
        _engine(NoAttention, path, cache="static")
    with pytest.raises(SpecError, match=r"--opt cache=static\|dynamic only, no compile"):
        _engine(Hydragen, path, compile="default")


def test_hydragen_model_logits_and_greedy_tokens_match_standard_attention(tiny_prompts):
    from transformers import DynamicCache

    from engines.adapters.hf.engine import HFGenerate
    from engines.adapters.hf.shared_prefix import Hydragen, NoAttention, common_prefix_len

    path, prompts = tiny_prompts
    p = common_prefix_len(prompts)
    assert p >= 40
    hyd, base = _engine(Hydragen, path), _engine(HFGenerate, path)
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        want = base.model(input_ids=ids).logits[:, p:]  # standard attention over the full prompts
        prefix_cache = DynamicCache(config=hyd.model.config)
        hyd.model(input_ids=ids[:1, :p], past_key_values=prefix_cache)
        state = hydragen.HydragenPrefix([(layer.keys, layer.values) for layer in prefix_cache.layers])
        pos = torch.arange(p, ids.shape[1])[None, :]
        got = hyd.model(input_ids=ids[:, p:], position_ids=pos, past_key_values=DynamicCache(config=hyd.model.config),
                        hydragen_prefix=state).logits  # fmt: skip
    assert (got - want).abs().max().item() < TOL
    n = 12
    res = hyd.generate(prompts, n)
    assert res.extra["hydragen_decode"] == "eager, static cache"  # the default; CUDA graphs on a GPU
    assert res.tokens == base.generate(prompts, n).tokens
    noatt = _engine(NoAttention, path).generate(prompts, n)
    assert len(noatt.tokens) == 3 and all(len(t) == n for t in noatt.tokens)
    assert noatt.tokens != base.generate(prompts, n).tokens  # attention matters: the bound is lossy


NO_TORCH = """
import sys
for name in ("torch", "transformers", "vllm", "llama_cpp", "textual"):
    sys.modules[name] = None  # the CLI process must not need them; the worker it starts does
from tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_microbench_attention_prints_the_table_without_torch_in_the_cli(tmp_path):
    out_json = tmp_path / "mb.jsonl"
    args = ["microbench", "attention", "--batch", "1,4", "--prefix-len", "64", "--suffix-len", "0,8", "--heads", "4",
            "--kv-heads", "2", "--head-dim", "16", "--iters", "2", "--warmup", "1", "--threads", "1",
            "--json", str(out_json)]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "160"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "standard ms" in proc.stdout and "hydragen ms" in proc.stdout and "speed-up" in proc.stdout
    import json

    lines = [json.loads(x) for x in out_json.read_text().splitlines()]
    points = lines[1:]
    assert [(x["batch"], x["prefix"], x["suffix"]) for x in points] == [(1, 64, 0), (1, 64, 8), (4, 64, 0), (4, 64, 8)]
    assert all(x["max_abs_diff"] < TOL and x["standard_ms"] > 0 and x["hydragen_ms"] > 0 for x in points)


def test_microbench_bad_input(tmp_path):
    from tests.helpers import cli

    proc = cli("microbench", "attention", "--heads", "6", "--kv-heads", "4")
    assert proc.returncode == 2 and "multiple of --kv-heads" in proc.stderr
    proc = cli("microbench", "attention", "--prefix-len", "0")
    assert proc.returncode == 2 and "below 1" in proc.stderr


def test_hydragen_keeps_its_buffers_for_calls_of_one_shape(tiny_prompts, monkeypatch):
    """The second call of a shape reuses the prefix/suffix buffers (new prefix content copied in); tokens stay right."""
    from engines.adapters.hf.engine import HFGenerate
    from engines.adapters.hf.shared_prefix import Hydragen
    from engines.models.prompt_sources import shared_prefix_prompts
    from engines.models.tiny import ensure_tiny

    path, prompts = tiny_prompts
    other = shared_prefix_prompts(ensure_tiny() / "tokenizer.json", 3, 40, 6, seed=3)  # same shape, other tokens
    assert len(other[0]) == len(prompts[0]) and other[0][:40] != prompts[0][:40]
    hyd, base = _engine(Hydragen, path), _engine(HFGenerate, path)
    first = hyd.generate(prompts, 8)
    held = hyd._state.layers[0][0].data_ptr(), hyd._state.suffix[0][0].data_ptr()
    second = hyd.generate(other, 8)
    assert (first.extra["hydragen_state"], second.extra["hydragen_state"]) == ("new", "reused")
    assert (hyd._state.layers[0][0].data_ptr(), hyd._state.suffix[0][0].data_ptr()) == held
    assert first.tokens == base.generate(prompts, 8).tokens and second.tokens == base.generate(other, 8).tokens
    assert hyd.generate(prompts[:2], 8).extra["hydragen_state"] == "new"  # another N: new buffers
    assert hyd.generate(prompts[:2], 9).extra["hydragen_state"] == "new"  # another G: more slots
    again = hyd.generate(prompts, 8)
    assert again.extra["hydragen_state"] == "new" and again.tokens == first.tokens

    def fail_on_decode(ids, start, cache, **kw):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(hyd, "_forward", fail_on_decode)
    with pytest.raises(RuntimeError, match="simulated"):
        hyd.generate(prompts, 8)
    assert hyd._state is None  # a failed call leaves nothing held
    monkeypatch.undo()
    assert hyd.generate(prompts, 8).extra["hydragen_state"] == "new"


def test_roofline_bytes_count_the_kv_each_engine_reads(tiny_prompts):
    """hf-noshare reads N copies of the prefix KV per step, hydragen one, noattention none."""
    from engines.adapters.hf.shared_prefix import HFNoShare, Hydragen, NoAttention, common_prefix_len
    from engines.measure import roofline

    path, prompts = tiny_prompts
    n, length, new = len(prompts), len(prompts[0]), 4
    p = common_prefix_len(prompts)
    ctx = roofline.mean_decode_context(length, new)
    got = {}
    for cls in (HFNoShare, Hydragen, NoAttention):
        eng = _engine(cls, path)
        got[cls.name] = eng.generate(prompts, new).extra["decode_bytes"] - eng.weight_read_bytes
    kv = _engine(HFNoShare, path).kv_per_token
    assert got["hf-noshare"] == pytest.approx(n * ctx * kv)
    assert got["hydragen"] == pytest.approx((p + n * (ctx - p)) * kv)
    assert got["noattention"] == 0
