"""Cell metrics from stored repeats, so any figure can be recomputed from the raw samples.

A repeat is {"latencies_s": [...timed minibatches...], "ttft_s": [...], "tokens": [...]}:
the seed-001 protocol (warm-up minibatches, then timed minibatches, repeated).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

# Two-sided 95% Student t quantiles by degrees of freedom (1..30); 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]  # fmt: skip


def t95(df: int) -> float:
    if df < 1:
        raise ValueError("need at least one degree of freedom")
    return _T95[df - 1] if df <= len(_T95) else 1.96


def repeat_means(repeats: list[dict[str, Any]]) -> list[float]:
    return [statistics.fmean(r["latencies_s"]) for r in repeats if r.get("latencies_s")]


def summarise(repeats: list[dict[str, Any]], batch: int, output_len: int) -> dict[str, float | None]:
    """Median latency over repeat means, spread, 95% CI, tokens/s, TTFT and decode tokens/s."""
    means = repeat_means(repeats)
    if not means:
        return {"latency_s": None, "latency_spread": None, "latency_ci95": None,
                "tokens_per_s": None, "ttft_s": None, "decode_tps": None}  # fmt: skip
    latency = statistics.median(means)
    spread = (max(means) - min(means)) / latency if latency > 0 else 0.0
    ci95 = t95(len(means) - 1) * statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else None
    tokens = batch * output_len
    ttfts = [t for r in repeats for t in (r.get("ttft_s") or []) if t is not None]
    ttft = statistics.median(ttfts) if ttfts else None
    decode_tps = None
    if ttft is not None and output_len > 1 and latency > ttft:
        decode_tps = batch * (output_len - 1) / (latency - ttft)
    return {
        "latency_s": latency,
        "latency_spread": spread,
        "latency_ci95": ci95,
        "tokens_per_s": tokens / latency if latency > 0 else None,
        "ttft_s": ttft,
        "decode_tps": decode_tps,
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline
