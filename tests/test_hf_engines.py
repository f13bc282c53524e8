"""The HF engines' attention kernels, static cache, compile and torch-compile loop on tiny (CPU), and a
random preset end to end through the CLI."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, cli, rows


@pytest.fixture(scope="module")
def prompts(tiny_model):
    from engines.models.workloads import synthetic_prompts

    return synthetic_prompts(tiny_model / "tokenizer.json", 3, 24, 0)  # round-trip through text (the pipeline)


def engine(cls_name: str, tiny_model, attention="sdpa", precision="fp32", **options):
    from engines.adapters.hf import engine as hf

    e = getattr(hf, cls_name)({"precision": precision, "attention": attention, "quant": None, "options": options})
    info = e.load(str(tiny_model), "cpu")
    return e, info


@pytest.fixture(scope="module")
def reference(tiny_model, prompts):
    e, _ = engine("HFGenerate", tiny_model)
    return e.generate(prompts, 10).tokens


@pytest.mark.parametrize("cls_name, attention, options", [
    ("HFGenerate", "eager", {}),
    ("HFGenerate", "sdpa-math", {}),
    ("HFGenerate", "sdpa-flash", {}),
    ("HFGenerate", "sdpa", {"cache": "static"}),
    ("HFPipeline", "sdpa-math", {"cache": "static"}),
    ("TorchCompile", "sdpa", {"compile": "off"}),
    ("TorchCompile", "eager", {"compile": "off"}),
])  # fmt: skip
def test_kernels_and_loops_agree_with_generate(tiny_model, prompts, reference, cls_name, attention, options):
    e, info = engine(cls_name, tiny_model, attention, **options)
    res = e.generate(prompts, 10)
    assert res.tokens == reference
    assert info.extra["sdpa_kernel"] == {"sdpa-math": "MATH", "sdpa-flash": "FLASH_ATTENTION"}.get(attention)
    assert info.extra["attn_implementation"] == ("eager" if attention == "eager" else "sdpa")
    ex = res.extra
    # roofline figures are there; energy is not (no NVML on a CPU run)
    assert ex["decode_bytes"] > info.extra["weight_read_bytes"] > 0 and ex["decode_step_s"] > 0
    assert "energy_j" not in ex and "bw_share" not in ex
    assert 0 < res.ttft_s < sum(res.step_times_s) + res.ttft_s
    assert len(res.step_times_s) == 9


@pytest.mark.slow
@pytest.mark.parametrize("cls_name, options", [("TorchCompile", {}), ("HFGenerate", {"cache": "static", "compile": "default"})])
def test_compiled_decoding_agrees_and_reports_compile_time(tiny_model, prompts, reference, cls_name, options):
    e, info = engine(cls_name, tiny_model, **options)
    first = e.generate(prompts, 10)
    second = e.generate(prompts, 10)
    assert first.tokens == second.tokens == reference
    assert first.extra["compiled_in_call"] == 1.0 and "compile_s" not in first.extra
    assert second.extra["compile_s"] == pytest.approx(first.extra["first_call_s"] - second.extra["steady_call_s"])
    assert second.extra["compile_s"] > 0


def test_flash_refuses_a_sliding_window_it_cannot_apply(tiny_model, prompts):
    e, _ = engine("HFGenerate", tiny_model, "sdpa-flash")
    e.window, e.flash_mask_ok = 16, False  # as on CUDA, where PyTorch's flash kernel takes no mask
    with pytest.raises(RuntimeError, match="cannot apply this model's 16-token sliding window"):
        e.generate([p[:12] for p in prompts], 8)
    assert e.generate([p[:8] for p in prompts], 8).tokens  # within the window: fine


def test_random_preset_end_to_end(tmp_path):
    db = tmp_path / "r.db"
    proc = cli("run", "--model", "codellama-7b:random", "--opt", "layers=1", "--precision", "bf16", "--quant",
               "none,nf4", "--batch", "1,2", "--input-len", "8", "--output-len", "4", *FAST, "--device", "cpu", db=db)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = rows(db, "select id, config, runtime, status from run order by created_at")
    assert [json.loads(r[1])["quant"] for r in runs] == ["none", "nf4"]
    full, nf4 = (json.loads(r[2]) for r in runs)
    assert full["random_weights_seed"] and full["dtype"] == "bf16" and nf4["dtype"] == "nf4/bf16"
    assert nf4["weight_bytes"] < full["weight_bytes"] and nf4["versions"]["bitsandbytes"]
    assert full["kv_bytes_per_token"] == 2 * 1 * 32 * 128 * 2  # one layer, 32 KV heads of 128, bf16
    for run_id, *_ in runs:
        cells = rows(db, "select status, repeats from cell where run_id=? order by idx", run_id)
        assert [c[0] for c in cells] == ["done", "done"]
        extra = json.loads(cells[0][1])[0]["extra"][0]
        assert extra["decode_bytes"] > 0 and extra["decode_step_s"] > 0
