"""HF engine options and the combinations rejected before anything runs (registry rules, then the CLI)."""

from __future__ import annotations

import pytest

from engines import registry
from engines.adapters.hf import options as hf_options
from engines.study.schema import EngineRun
from tests.helpers import cli


def check(device="cpu", engine="hf-generate", precision="bf16", attention="sdpa", quant=None, **options):
    return registry.check(EngineRun(engine=engine, precision=precision, attention=attention, quant=quant,
                                    options=options), device)  # fmt: skip


@pytest.mark.parametrize("kwargs, device, reason", [
    ({"attention": "flash_attention_2"}, "cpu", "flash_attention_2 is a CUDA kernel"),
    ({"attention": "sdpa-efficient"}, "cpu", "sdpa-efficient is a CUDA kernel"),
    ({"attention": "sdpa-flash", "precision": "fp32"}, "cuda", "fp16/bf16 only"),
    ({"attention": "flash_attention_2", "precision": "fp32"}, "cuda", "fp16/bf16 only"),
    ({"attention": "sdpa-flash", "cache": "static"}, "cuda", "static KV cache"),
    ({"compile": "reduce-overhead", "cache": "static"}, "cpu", "CUDA graphs"),
    ({"compile": "default"}, "cpu", "only with a static KV cache"),
    ({"compile": "default", "cache": "static", "quant": "nf4"}, "cuda", "compile with nf4"),
    ({"double_quant": True, "quant": "int8"}, "cuda", "4-bit quantization only"),
    ({"double_quant": True}, "cuda", "4-bit quantization only"),
    ({"cache": "paged"}, "cpu", "cache must be dynamic or static"),
    ({"compile": "fast"}, "cpu", "compile must be one of"),
    ({"layers": 0}, "cpu", "layers must be a positive integer"),
    ({"sliding_window": -1}, "cpu", "sliding_window must be"),
    ({"n_threads": 2}, "cpu", "has no option n_threads"),
    ({"engine": "torch-compile", "cache": "dynamic"}, "cpu", "always uses a static KV cache"),
    ({"engine": "torch-compile", "compile": "reduce-overhead"}, "cpu", "CUDA graphs"),
])  # fmt: skip
def test_invalid_combinations_are_rejected(kwargs, device, reason):
    avail = check(device, **kwargs)
    assert not avail.ok and reason in avail.reason, avail


@pytest.mark.parametrize("kwargs, device", [
    ({}, "cpu"),
    ({"attention": "eager", "precision": "fp32"}, "cpu"),
    ({"attention": "sdpa-math", "precision": "fp32"}, "cpu"),
    ({"attention": "sdpa-flash", "precision": "fp32"}, "cpu"),  # PyTorch's CPU flash kernel takes fp32 and masks
    ({"attention": "sdpa-flash"}, "cuda"),
    ({"attention": "sdpa-efficient", "precision": "fp32", "cache": "static"}, "cuda"),
    ({"cache": "static", "compile": "reduce-overhead"}, "cuda"),
    ({"cache": "static", "compile": "default"}, "cpu"),
    ({"engine": "torch-compile"}, "cpu"),
    ({"engine": "torch-compile"}, "cuda"),
    ({"engine": "torch-compile", "compile": "off"}, "cpu"),
    ({"quant": "none"}, "cpu"),
    ({"quant": "int8", "precision": "fp16"}, "cuda"),
    ({"quant": "nf4", "precision": "fp32", "double_quant": True}, "cuda"),
    ({"quant": "fp4"}, "cpu"),
    ({"layers": 2, "sliding_window": "none"}, "cpu"),
])  # fmt: skip
def test_valid_combinations_pass(kwargs, device):
    avail = check(device, **kwargs)
    assert avail.ok, avail


def test_unavailable_backends_say_why_and_how():
    import importlib.util

    fa = check("cuda", attention="flash_attention_2")
    if importlib.util.find_spec("flash_attn") is None:
        assert not fa.ok and "flash-attn package" in fa.reason and "pip install flash-attn" in fa.hint
    gptq = check("cuda", quant="gptq", precision="fp16")
    if not any(importlib.util.find_spec(m) for m in hf_options.GPTQ_BACKENDS):
        assert not gptq.ok and "GPTQ backend" in gptq.reason and "gptqmodel" in gptq.hint


def test_option_defaults():
    assert hf_options.parse("hf-generate", {}, "cuda") == {"cache": "dynamic", "compile": "off", "double_quant": False}
    assert hf_options.parse("torch-compile", {}, "cuda:0")["compile"] == "reduce-overhead"
    assert hf_options.parse("torch-compile", {}, "cpu")["compile"] == "default"
    assert hf_options.parse("hf-generate", {"compile": False, "sliding_window": "none"}, "cpu")["compile"] == "off"


def test_axes_of_the_hf_engines():
    runs = registry.expand(["hf-generate", "torch-compile"], precision=["bf16"], attention=["sdpa-flash"],
                           quant=["none", "nf4"])  # fmt: skip
    assert [(r.engine, r.quant) for r in runs] == [("hf-generate", "none"), ("hf-generate", "nf4"),
                                                   ("torch-compile", "none"), ("torch-compile", "nf4")]  # fmt: skip
    assert registry.expand(["hf-generate"])[0].quant == "none"  # no quantization unless asked


def test_cli_rejects_before_running(tmp_path):
    db = tmp_path / "r.db"
    proc = cli("run", "--model", "tiny", "--attention", "flash_attention_2", "--device", "cpu", db=db)
    assert proc.returncode == 2 and "flash_attention_2 is a CUDA kernel" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cli("run", "--model", "tiny", "--opt", "cache=static", "--opt", "compile=reduce-overhead", "--device", "cpu",
               db=db)  # fmt: skip
    assert proc.returncode == 2 and "CUDA graphs" in proc.stderr
    proc = cli("run", "--model", "nosuch-7b:random", "--device", "cpu", db=db)
    assert proc.returncode == 2 and "unknown preset 'nosuch-7b'" in proc.stderr
    assert not db.exists()
