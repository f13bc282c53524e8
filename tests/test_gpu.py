"""Integration tests on a CUDA GPU (`pytest -m gpu` on the GPU machine; skipped elsewhere)."""

from __future__ import annotations

import json
import os

import psutil
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from tests.helpers import cli, rows  # noqa: E402

CUDA = "cuda"


def make(cls_name: str, model: str = "codellama-7b:random", precision: str = "bf16", attention: str = "sdpa",
         quant: str | None = None, **options):  # fmt: skip
    from engines.adapters.hf import engine as hf

    e = getattr(hf, cls_name)({"precision": precision, "attention": attention, "quant": quant,
                               "options": {"layers": 2, **options}})  # fmt: skip
    info = e.load(model, CUDA)
    return e, info


def prompts(batch: int = 2, length: int = 64) -> list[list[int]]:
    from engines.models.refs import tokenizer_file
    from engines.models.workloads import synthetic_prompts

    return synthetic_prompts(tokenizer_file("codellama-7b:random"), batch, length, 0)


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / len(pairs)


def test_preset_is_built_on_the_gpu_without_a_host_copy():
    warm, _ = make("HFGenerate", "starcoder2-7b:random", layers=1)  # CUDA context and imports first
    del warm
    torch.cuda.empty_cache()
    rss0, gpu0 = psutil.Process(os.getpid()).memory_info().rss, torch.cuda.memory_allocated()
    e, info = make("HFGenerate", "starcoder2-7b:random", layers=8)
    grown_host = psutil.Process(os.getpid()).memory_info().rss - rss0
    grown_gpu = torch.cuda.memory_allocated() - gpu0
    assert info.weight_bytes > 2e9 and grown_gpu >= info.weight_bytes
    assert grown_host < info.weight_bytes / 4, f"host memory grew by {grown_host / 2**30:.2f} GiB"
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in e.model.parameters())
    res = e.generate(prompts(), 8)
    assert len(res.tokens) == 2 and all(len(t) == 8 for t in res.tokens)


def test_pytorch_flash_kernel_takes_no_mask_on_cuda():
    """Why sdpa-flash + a static cache (and a sliding window beyond its length) is rejected on GPUs."""
    from engines.adapters.hf.engine import _flash_takes_mask

    assert _flash_takes_mask(torch.device(CUDA)) is False


def test_attention_kernels_on_the_gpu():
    """Forced SDPA kernels and eager compute the same logits (bf16 tolerance), and each engine generates."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ids = torch.tensor(prompts(2, 256), device=CUDA)
    ref_engine, _ = make("HFGenerate", attention="sdpa")
    logits = {}
    with torch.inference_mode():
        for name in ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
            with sdpa_kernel(getattr(SDPBackend, name)):
                logits[name] = ref_engine.model(input_ids=ids).logits.float()
        eager, _ = make("HFGenerate", attention="eager")  # same seeded weights
        logits["eager"] = eager.model(input_ids=ids).logits.float()
    for name, value in logits.items():
        err = (value - logits["MATH"]).norm() / logits["MATH"].norm()
        assert err < 2e-2, (name, err.item())
    for attention in ("sdpa-flash", "sdpa-efficient", "sdpa-math", "eager"):
        e, info = make("HFGenerate", attention=attention)
        res = e.generate(prompts(), 8)
        assert all(len(t) == 8 for t in res.tokens) and res.extra["decode_step_s"] > 0
        assert res.extra["peak_bw"] > 1e12 and 0 < res.extra["bw_share"] < 1.5
        if "energy_j" in res.extra:  # NVML's energy counter: coarse ticks, so a short minibatch may read 0
            assert res.extra["energy_j"] >= 0
        del e


def test_torch_compile_reduce_overhead():
    # fp32: compiled and eager kernels round alike, so greedy tokens must be identical
    p = prompts(1, 128)
    plain, _ = make("TorchCompile", precision="fp32", compile="off")
    want = plain.generate(p, 32)
    del plain
    e, _ = make("TorchCompile", precision="fp32", compile="reduce-overhead")
    first = e.generate(p, 32)
    second = e.generate(p, 32)
    third = e.generate(p, 32)
    assert first.extra["compiled_in_call"] == 1.0 and third.extra["compile_s"] > 0
    assert first.tokens == second.tokens == third.tokens == want.tokens
    assert third.extra["decode_step_s"] < want.extra["decode_step_s"]  # CUDA graphs beat eager launches


def test_hf_generate_static_cache_compile():
    p = prompts(1, 64)
    e, _ = make("HFGenerate", cache="static", compile="reduce-overhead")
    runs = [e.generate(p, 16) for _ in range(3)]
    assert runs[1].tokens == runs[2].tokens and runs[2].extra["compile_s"] > 0


@pytest.mark.parametrize("quant, precision, double_quant", [("int8", "fp16", False), ("nf4", "fp16", True),
                                                            ("nf4", "fp32", False), ("fp4", "bf16", False)])  # fmt: skip
def test_bitsandbytes_on_the_gpu(quant, precision, double_quant):
    import bitsandbytes as bnb

    full, full_info = make("HFGenerate", precision=precision)
    full_bytes = full_info.weight_bytes
    del full
    e, info = make("HFGenerate", precision=precision, quant=quant, double_quant=double_quant)
    layer = bnb.nn.Linear8bitLt if quant == "int8" else bnb.nn.Linear4bit
    assert isinstance(e.model.model.layers[0].mlp.up_proj, layer)
    assert info.weight_bytes < full_bytes and info.dtype == f"{quant}/{precision}"
    res = e.generate(prompts(), 8)
    assert all(len(t) == 8 for t in res.tokens)


def test_sweep_records_oom_and_finishes(tmp_path):
    db = tmp_path / "oom.db"
    proc = cli("run", "--model", "codellama-7b:random", "--opt", "layers=2", "--precision", "bf16", "--attention",
               "eager", "--batch", "32,64", "--input-len", "8192,16384", "--output-len", "2", "--warmup", "0",
               "--iters", "1", "--repeats", "1", "--device", "cuda", db=db)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    statuses = [r[3] for r in rows(db, "select batch, input_len, output_len, status from cell order by idx")]
    assert statuses == ["oom", "skipped", "skipped", "skipped"]
    run = rows(db, "select status, runtime from run")[0]
    assert run[0] == "done" and json.loads(run[1])["weight_bytes"] > 0
