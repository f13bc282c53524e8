"""Hydragen attention against standard attention: the kernel alone, the whole tiny model, and the microbenchmark."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")  # the hf extra; CI installs it

from engines import hydragen  # noqa: E402
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
    from engines.prompt_sources import shared_prefix_prompts
    from engines.tiny import ensure_tiny

    path = ensure_tiny()
    return str(path), shared_prefix_prompts(path / "tokenizer.json", 3, 40, 6, seed=1)


def _engine(cls, path):
    e = cls({"engine": cls.name, "precision": "fp32", "attention": None, "quant": None, "options": {}})
    e.load(path, "cpu")
    return e


def test_hydragen_model_logits_and_greedy_tokens_match_standard_attention(tiny_prompts):
    from transformers import DynamicCache

    from engines.hf import HFGenerate
    from engines.shared_prefix import Hydragen, NoAttention, common_prefix_len

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
    assert hyd.generate(prompts, n).tokens == base.generate(prompts, n).tokens
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
