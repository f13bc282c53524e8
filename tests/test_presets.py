"""Architecture presets: published sizes, meta-device counts, deterministic random weights, the CLI listing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engines.base import SpecError
from engines.models import presets
from tests.helpers import ROOT

EXPECTED = {"starcoder2-3b", "starcoder2-7b", "starcoder2-15b", "codellama-7b", "codellama-13b", "codellama-34b",
            "wizardcoder-15b", "deepseek-coder-6.7b", "qwen2.5-coder-7b"}  # fmt: skip
# A shape small enough to build in a test, with every structural feature of the real preset kept.
SMALL = {"llama": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "vocab_size": 4100},
         "starcoder2": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "vocab_size": 4100, "sliding_window": 16},
         "gpt_bigcode": {"n_layer": 2, "n_embd": 64, "n_inner": 96, "n_head": 4, "vocab_size": 4100, "n_positions": 128}}  # fmt: skip


def test_every_preset_is_there_with_its_published_size():
    assert set(presets.names()) == EXPECTED
    for name in EXPECTED:
        p = presets.load(name)
        assert p.ref == f"{name}:random"
        assert abs(p.params / p.published_params - 1) < 0.01, name  # within 1% of the published size


def test_cached_counts_match_the_meta_device():
    from engines.adapters.hf.build import count_params

    for name in sorted(EXPECTED):
        p = presets.load(name)
        assert count_params(p) == (p.params, p.linear_params), name


def test_model_refs():
    from engines.models.refs import kind_of, tokenizer_file

    assert kind_of("starcoder2-7b:random") == "preset"
    assert presets.parse_ref("codellama-34b:random") == "codellama-34b"
    assert presets.parse_ref("tiny") is None
    with pytest.raises(SpecError, match="unknown preset 'starcoder9-1b'.*starcoder2-7b"):
        kind_of("starcoder9-1b:random")
    assert tokenizer_file("starcoder2-7b:random").name == "tokenizer.json"


def test_weight_bytes_per_precision():
    p = presets.load("codellama-7b")
    assert p.weight_bytes("fp32") == 4 * p.params and p.weight_bytes("bf16") == 2 * p.params
    int8, nf4 = p.weight_bytes("fp16", "int8"), p.weight_bytes("bf16", "nf4")
    nf4_dq = p.weight_bytes("bf16", "nf4", double_quant=True)
    assert p.weight_bytes("bf16") > int8 > nf4 > nf4_dq
    # 4-bit: half a byte per weight plus one fp32 scale per 64 weights; the rest stays bf16
    other = p.params - p.linear_params
    assert nf4 == p.linear_params // 2 + 4 * (p.linear_params // 64) + 2 * other


@pytest.mark.parametrize("name", ["codellama-7b", "starcoder2-7b", "wizardcoder-15b", "qwen2.5-coder-7b"])
def test_random_weights_are_deterministic_tied_and_finite(name):
    import torch

    from engines.adapters.hf.build import random_model, weight_bytes

    p = presets.load(name)
    small = dict(SMALL.get(p.model_type, SMALL["llama"]))
    a = random_model(p, torch.device("cpu"), torch.float32, "sdpa", overrides=small)
    b = random_model(p, torch.device("cpu"), torch.float32, "sdpa", overrides=small)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(t.device.type == "meta" for t in [*a.parameters(), *a.buffers()])
    tied = bool(p.config.get("tie_word_embeddings", p.model_type == "gpt_bigcode"))
    assert (a.get_output_embeddings().weight is a.get_input_embeddings().weight) == tied
    for n, t in a.named_parameters():
        if n.endswith("bias"):
            assert torch.count_nonzero(t) == 0, n
        elif t.dim() == 1:
            assert torch.all(t == 1), n
        else:
            assert 0.005 < t.std().item() < 0.5, n
    ids = torch.randint(0, 4096, (2, 12))  # tiny's tokenizer ids
    with torch.inference_mode():
        logits = a(input_ids=ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == small["vocab_size"]
    total, read = weight_bytes(a)
    assert total == 4 * sum(t.numel() for t in a.parameters())
    assert read < total if (not tied or p.model_type == "gpt_bigcode") else read == total


@pytest.mark.parametrize("quant", ["int8", "nf4", "fp4"])
def test_quantized_random_model_is_built_layer_by_layer(quant):
    import bitsandbytes as bnb  # the quant extra; CPU builds quantize and run too
    import torch

    from engines.adapters.hf.build import random_model, weight_bytes

    p = presets.load("codellama-7b")
    m = random_model(p, torch.device("cpu"), torch.bfloat16, "sdpa", quant=quant, double_quant=quant != "int8",
                     overrides=SMALL["llama"])  # fmt: skip
    layer = bnb.nn.Linear8bitLt if quant == "int8" else bnb.nn.Linear4bit
    assert isinstance(m.model.layers[0].self_attn.q_proj, layer) and isinstance(m.model.layers[1].mlp.down_proj, layer)
    assert type(m.lm_head) is torch.nn.Linear  # the head stays in bf16, as transformers does
    full = random_model(p, torch.device("cpu"), torch.bfloat16, "sdpa", overrides=SMALL["llama"])
    assert weight_bytes(m)[0] < weight_bytes(full)[0]
    with torch.inference_mode():
        assert torch.isfinite(m(input_ids=torch.randint(0, 4096, (1, 8))).logits).all()


def test_models_command_lists_presets_without_torch():
    code = ("import argparse, sys; from tui.commands import models; p = argparse.ArgumentParser(); "
            "s = p.add_subparsers(); models.register(s); a = p.parse_args(['models', '--json']); a.func(a); "
            "assert 'torch' not in sys.modules, 'the CLI imported torch'")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r["model"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"tiny"} | {f"{n}:random" for n in EXPECTED}
    sc = rows["starcoder2-7b:random"]
    assert sc["params"] == presets.load("starcoder2-7b").params and sc["window"] == 4096 and sc["kv_heads"] == 4
    assert sc["weight_bytes"]["bf16"] == 2 * sc["params"] > sc["weight_bytes"]["int8"] > sc["weight_bytes"]["nf4"]
    assert rows["wizardcoder-15b:random"]["kv_heads"] == 1  # multi-query attention
    assert 1e6 < rows["tiny"]["params"] < 1e8
