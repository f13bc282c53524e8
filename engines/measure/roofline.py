"""Memory-bandwidth roofline of decoding, as plain arithmetic (no torch; tested on the CPU).

A decode step must read every weight once (the input embedding table only by rows) and the KV
cache of every sequence up to its current length (or its sliding window). Those bytes over the
measured step time are the achieved bandwidth; over the GPU's peak they are the share of the
roofline the engine reaches. The peak is the one `codebench-tui probe` measured on this device
when there is one, else the datasheet figure below.
"""

from __future__ import annotations

import re
from typing import Any

# Datasheet memory bandwidth in bytes/s, matched in order against the NVML / torch device name.
GPU_PEAK_BW: tuple[tuple[str, float], ...] = (
    (r"GH200", 4.0e12),
    (r"H200", 4.8e12),
    (r"H100.*NVL", 3.9e12),
    (r"H100.*PCIe", 2.0e12),
    (r"H100", 3.35e12),  # SXM5 80GB HBM3
    (r"H800", 3.35e12),
    (r"B200", 8.0e12),
    (r"A100.*SXM.*80", 2.039e12),
    (r"A100.*80GB PCIe", 1.935e12),
    (r"A100", 1.555e12),  # 40GB, SXM or PCIe
    (r"A800", 2.039e12),
    (r"L40S", 864e9),
    (r"L40", 864e9),
    (r"L4\b", 300e9),
    (r"A10G", 600e9),
    (r"A10\b", 600e9),
    (r"RTX 6000 Ada", 960e9),
    (r"RTX A6000", 768e9),
    (r"RTX 5090", 1792e9),
    (r"RTX 4090", 1008e9),
    (r"RTX 3090", 936e9),
    (r"V100", 900e9),
    (r"T4\b", 320e9),
)


def datasheet_bandwidth(device_name: str | None) -> float | None:
    """Peak memory bandwidth (bytes/s) of a known GPU from its name, else None."""
    if not device_name:
        return None
    for pattern, bw in GPU_PEAK_BW:
        if re.search(pattern, device_name, re.IGNORECASE):
            return bw
    return None


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Keys and values of one token over all layers."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def mean_decode_context(input_len: int, output_len: int, window: int | None = None) -> float:
    """Mean number of cached tokens a decode step attends to.

    Decode step k (k = 1 .. output_len - 1) feeds the k-th generated token, so it attends to
    input_len + k positions (capped by a sliding window). The first token comes from the prefill.
    """
    steps = output_len - 1
    if steps < 1:
        return float(input_len)
    total = sum(min(input_len + k, window) if window else input_len + k for k in range(1, output_len))
    return total / steps


def decode_step_bytes(weight_read_bytes: int, kv_per_token: int, batch: int, context: float,
                      shared: int = 0) -> float:  # fmt: skip
    """Bytes one decode step must read: all weights once, plus each sequence's KV cache.

    `shared` leading context tokens are one KV cache for the whole batch, read once (hydragen's prefix).
    """
    return weight_read_bytes + (shared + batch * (context - shared)) * kv_per_token


def decode_step_s(latency_s: float, ttft_s: float | None, output_len: int) -> float | None:
    """Mean decode step time of a minibatch: time after the first token over the remaining steps."""
    if ttft_s is None or output_len < 2 or latency_s <= ttft_s:
        return None
    return (latency_s - ttft_s) / (output_len - 1)


def roofline_tokens_per_s(peak_bw: float, step_bytes: float, batch: int) -> float:
    """Generated tokens/s if every decode step ran at the peak bandwidth."""
    return batch * peak_bw / step_bytes


def decode_roofline(*, weight_read_bytes: int, kv_per_token: int, batch: int, input_len: int, output_len: int,
                    window: int | None, latency_s: float, ttft_s: float | None,
                    peak_bw: float | None, shared: int = 0) -> dict[str, Any]:  # fmt: skip
    """The roofline figures of one minibatch (what the engines put in GenerateResult.extra)."""
    context = mean_decode_context(input_len, output_len, window)
    step_bytes = decode_step_bytes(weight_read_bytes, kv_per_token, batch, context, shared)
    step_s = decode_step_s(latency_s, ttft_s, output_len)
    out: dict[str, Any] = {"decode_bytes": step_bytes, "decode_step_s": step_s}
    if step_s:
        out["achieved_bw"] = step_bytes / step_s
    if peak_bw:
        out["peak_bw"] = peak_bw
        out["roofline_tps"] = roofline_tokens_per_s(peak_bw, step_bytes, batch)
        if step_s:
            out["bw_share"] = out["achieved_bw"] / peak_bw
    return out


def cell_efficiency(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's efficiency from its stored repeats (each timed minibatch's extra): joules per generated
    token, median decode step time, achieved bandwidth and roofline share, and any throttling seen."""
    import statistics

    extras = [(e, n) for r in repeats for e, n in zip(r.get("extra") or [], r.get("tokens") or [])]
    out: dict[str, Any] = {}
    energy = [(e["energy_j"], n) for e, n in extras if e.get("energy_j") is not None]
    if energy and sum(n for _, n in energy) > 0:
        out["j_per_token"] = sum(j for j, _ in energy) / sum(n for _, n in energy)
    for key in ("decode_step_s", "achieved_bw", "bw_share", "roofline_tps", "peak_bw"):
        values = [e[key] for e, _ in extras if e.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    # clock-event reasons only (runs stored before violation timers stopped being flags listed them too)
    throttle = sorted({t for e, _ in extras for t in e.get("throttle") or [] if not t.endswith("_violation")})
    if throttle:
        out["throttle"] = throttle
    return out
