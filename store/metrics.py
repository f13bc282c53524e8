"""Cell metrics from stored repeats, so any figure can be recomputed from the raw samples.

A repeat is {"latencies_s": [...timed minibatches...], "ttft_s": [...], "tokens": [...]}:
the seed-001 protocol (warm-up minibatches, then timed minibatches, repeated).
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Any

# Two-sided 95% Student t quantiles by degrees of freedom (1..30), as printed in tables; other degrees of
# freedom (Welch's are fractional) are computed from the t distribution (t_quantile).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]  # fmt: skip


def t95(df: float) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (any real df >= 1)."""
    if df < 1:
        raise ValueError("need at least one degree of freedom")
    if float(df).is_integer() and df <= len(_T95):
        return _T95[int(df) - 1]
    return t_quantile(0.975, float(df))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h


def _ibeta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


@functools.lru_cache(maxsize=512)
def t_quantile(p: float, df: float) -> float:
    """t with P(T <= t) = p for Student's t with `df` > 0 degrees of freedom (0.5 < p < 1), by bisection
    on P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2); good to about 1e-10."""
    if not 0.5 < p < 1 or df <= 0:
        raise ValueError("need 0.5 < p < 1 and df > 0")
    tail = 2 * (1 - p)
    two_sided = lambda t: _ibeta(df / 2, 0.5, df / (df + t * t))  # noqa: E731
    lo, hi = 0.0, 2.0
    while two_sided(hi) > tail:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if two_sided(mid) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def repeat_means(repeats: list[dict[str, Any]]) -> list[float]:
    return [statistics.fmean(r["latencies_s"]) for r in repeats if r.get("latencies_s")]


def _tokens_per_minibatch(repeats: list[dict[str, Any]]) -> float | None:
    """What the minibatches really generated (a serving cell sends more requests than its concurrency, and a failed
    request generates none); None for runs stored before the count was kept."""
    counts = [t for r in repeats for t in (r.get("tokens") or []) if isinstance(t, (int, float))]
    return statistics.fmean(counts) if counts else None


def summarise(repeats: list[dict[str, Any]], batch: int, output_len: int) -> dict[str, float | None]:
    """Median latency over repeat means, spread, 95% CI, tokens/s, TTFT and decode tokens/s."""
    means = repeat_means(repeats)
    if not means:
        return {"latency_s": None, "latency_spread": None, "latency_ci95": None,
                "tokens_per_s": None, "ttft_s": None, "decode_tps": None}  # fmt: skip
    latency = statistics.median(means)
    spread = (max(means) - min(means)) / latency if latency > 0 else 0.0
    ci95 = t95(len(means) - 1) * statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else None
    tokens = _tokens_per_minibatch(repeats) or batch * output_len
    ttfts = [t for r in repeats for t in (r.get("ttft_s") or []) if t is not None]
    ttft = statistics.median(ttfts) if ttfts else None
    decode_tps = None
    if ttft is not None and output_len > 1 and latency > ttft:
        decode_tps = tokens / output_len * (output_len - 1) / (latency - ttft)
    return {
        "latency_s": latency,
        "latency_spread": spread,
        "latency_ci95": ci95,
        "tokens_per_s": tokens / latency if latency > 0 else None,
        "ttft_s": ttft,
        "decode_tps": decode_tps,
    }


def peak_mem(cell: dict[str, Any]) -> int | None:
    """The most telling peak: GPU allocator, else NVML device memory, else host RSS."""
    for key in ("peak_gpu_bytes", "peak_nvml_bytes", "peak_rss_bytes"):
        if cell.get(key):
            return cell[key]
    return None


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline
