"""Roofline arithmetic (pure), KV sizes against real HF caches, and the NVML-absent paths."""

from __future__ import annotations

import pytest

from engines.measure import gpu_meter, roofline
from engines.models import presets


def test_datasheet_bandwidth_by_gpu_name():
    assert roofline.datasheet_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert roofline.datasheet_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert roofline.datasheet_bandwidth("NVIDIA H100 NVL") == 3.9e12
    assert roofline.datasheet_bandwidth("NVIDIA H200") == 4.8e12
    assert roofline.datasheet_bandwidth("NVIDIA GH200 480GB") == 4.0e12
    assert roofline.datasheet_bandwidth("NVIDIA A100-SXM4-80GB") == 2.039e12
    assert roofline.datasheet_bandwidth("NVIDIA A100-SXM4-40GB") == 1.555e12
    assert roofline.datasheet_bandwidth("NVIDIA L4") == 300e9
    assert roofline.datasheet_bandwidth("NVIDIA L40S") == 864e9
    assert roofline.datasheet_bandwidth("Tesla T4") == 320e9
    assert roofline.datasheet_bandwidth("AMD EPYC 7B13") is None and roofline.datasheet_bandwidth(None) is None


def test_mean_decode_context():
    # output 4: decode steps feed tokens 1..3, attending to 10+1, 10+2, 10+3 positions
    assert roofline.mean_decode_context(10, 4) == 12.0
    assert roofline.mean_decode_context(10, 1) == 10.0
    assert roofline.mean_decode_context(10, 4, window=11) == 11.0  # capped by the window
    assert roofline.mean_decode_context(512, 128) == 512 + 64


def test_decode_roofline_figures():
    # codellama-7b bf16 at batch 1: weights read + KV at 576 tokens, on a 3.35 TB/s GPU
    kv = roofline.kv_bytes_per_token(32, 32, 128, 2)
    assert kv == 524288  # 0.5 MiB per token
    r = roofline.decode_roofline(weight_read_bytes=13_000_000_000, kv_per_token=kv, batch=1, input_len=512,
                                 output_len=128, window=None, latency_s=1.27 + 0.03, ttft_s=0.03, peak_bw=3.35e12)  # fmt: skip
    step_bytes = 13e9 + 576 * kv
    assert r["decode_bytes"] == pytest.approx(step_bytes)
    assert r["decode_step_s"] == pytest.approx(0.01)
    assert r["achieved_bw"] == pytest.approx(step_bytes / 0.01)
    assert r["bw_share"] == pytest.approx(step_bytes / 0.01 / 3.35e12)
    assert r["roofline_tps"] == pytest.approx(3.35e12 / step_bytes)
    # the share is also decode tokens/s over roofline tokens/s
    assert r["bw_share"] == pytest.approx((1 / 0.01) / r["roofline_tps"])
    none = roofline.decode_roofline(weight_read_bytes=1, kv_per_token=1, batch=1, input_len=1, output_len=1,
                                    window=None, latency_s=1.0, ttft_s=1.0, peak_bw=None)  # fmt: skip
    assert none["decode_step_s"] is None and "bw_share" not in none and "peak_bw" not in none


def test_cell_efficiency_aggregates_the_timed_minibatches():
    reps = [{"tokens": [64, 64], "extra": [{"energy_j": 32.0, "bw_share": 0.5, "decode_step_s": 0.01},
                                           {"energy_j": 32.0, "bw_share": 0.7, "decode_step_s": 0.02,
                                            "throttle": ["sw_power_cap", "power_violation"]}]},
            {"tokens": [64], "extra": [{"energy_j": 64.0, "bw_share": 0.6, "decode_step_s": 0.03}]}]  # fmt: skip
    eff = roofline.cell_efficiency(reps)
    assert eff["j_per_token"] == pytest.approx(128 / 192)
    assert eff["bw_share"] == 0.6 and eff["decode_step_s"] == 0.02 and eff["throttle"] == ["sw_power_cap"]
    assert roofline.cell_efficiency([{"tokens": [4], "latencies_s": [1.0]}]) == {}


@pytest.mark.parametrize("name, small", [
    ("codellama-7b", {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "vocab_size": 4100}),
    ("wizardcoder-15b", {"n_layer": 2, "n_embd": 64, "n_inner": 96, "n_head": 4, "vocab_size": 4100}),
    ("starcoder2-7b", {"num_hidden_layers": 3, "hidden_size": 72, "intermediate_size": 96, "num_attention_heads": 6,
                       "num_key_value_heads": 3, "vocab_size": 4100, "sliding_window": 64}),
])  # fmt: skip
def test_kv_bytes_per_token_match_a_real_cache(name, small):
    import torch

    from engines.adapters.hf.build import random_model

    p = presets.load(name)
    model = random_model(p, torch.device("cpu"), torch.bfloat16, "sdpa", overrides=small)
    layout = presets.kv_layout({**p.config, **small})
    tokens = 20
    with torch.inference_mode():
        out = model(input_ids=torch.randint(0, 4096, (1, tokens)), use_cache=True)
    cache = out.past_key_values
    stored = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    per_token = roofline.kv_bytes_per_token(layout["layers"], layout["kv_heads"], layout["head_dim"], 2)
    assert stored == tokens * per_token


def test_kv_layout_of_the_presets():
    assert presets.kv_layout(presets.load("wizardcoder-15b").config) == {"layers": 40, "kv_heads": 1, "head_dim": 128,
                                                                         "window": None}  # fmt: skip
    assert presets.kv_layout(presets.load("starcoder2-7b").config)["window"] == 4096
    assert presets.kv_layout(presets.load("qwen2.5-coder-7b").config)["window"] is None  # use_sliding_window false
    assert presets.kv_layout(presets.load("codellama-34b").config)["kv_heads"] == 8


class _FakeNvml:
    """Stands in for pynvml: one GPU whose counters move between readings."""

    NVML_CLOCK_SM, NVML_PERF_POLICY_POWER, NVML_PERF_POLICY_THERMAL = 1, 0, 1

    def __init__(self):
        self.energy, self.reasons, self.power_ns = 1_000_000, 0x1, 0

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return "h0"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-abc"

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self.energy

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetViolationStatus(self, h, policy):
        class V:
            violationTime = self.power_ns if policy == 0 else 0

        return V()


def test_meter_energy_and_throttling():
    nv = _FakeNvml()
    meter = gpu_meter.GpuMeter(uuid="abc", nvml=nv)
    assert meter.available and meter.name() == "NVIDIA H100 80GB HBM3"
    a = meter.read()
    nv.energy += 25_500  # mJ
    nv.reasons = 0x4 | 0x1  # power cap (flagged) while busy; idle is not a slowdown
    nv.power_ns += 2_000_000
    d = gpu_meter.delta(a, meter.read())
    assert d["energy_j"] == pytest.approx(25.5) and d["sm_clock_mhz"] == 1980
    assert d["throttle"] == ["sw_power_cap"] and d["power_violation_s"] == pytest.approx(0.002)
    assert gpu_meter.reason_names(0x1 | 0x40) == ["hw_thermal"]
    assert gpu_meter.reason_names(0x1, slowing_only=False) == ["gpu_idle"]


def test_nvml_absent_paths():
    class Broken:
        def nvmlDeviceGetCount(self):
            raise RuntimeError("NVML Shared Library Not Found")

        def nvmlDeviceGetHandleByIndex(self, i):
            raise RuntimeError("NVML Shared Library Not Found")

    meter = gpu_meter.GpuMeter(uuid="abc", nvml=Broken())
    assert not meter.available and meter.read() is None and meter.name() is None
    assert gpu_meter.delta(None, None) == {} and gpu_meter.delta({"energy_mj": 1}, None) == {}
    assert gpu_meter.delta({"energy_mj": None}, {"energy_mj": None}) == {}
    from engines.measure.probe import peak_bandwidth

    assert peak_bandwidth(None) == (None, "")
    assert peak_bandwidth("NVIDIA H200") == (4.8e12, "datasheet")
