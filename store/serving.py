"""Serving figures from the per-request records a server engine stores with every pass of a cell: latency
percentiles, SLO attainment and goodput (vLLM's definition: the requests, and their output tokens, that meet
every SLO, per second of wall time). Standard library only; the worker computes a cell's figures with it and
the store recomputes them per repeat (for intervals) from the same records.

A record: {"ok", "due", "send", "ttft", "e2e", "itl": [gaps], "tokens"}, times in seconds, from
engines/adapters/openai/engine.py.
"""

from __future__ import annotations

import math
from typing import Any

MERGED_GAP_S = 20e-6  # two chunks this close came in one read: the client (or host) was too busy to read each
SLO_METRICS = {
    "ttft": "time to the first streamed token",
    "tpot": "mean time per output token after the first: (E2E - TTFT) / (tokens - 1)",
    "itl": "every gap between two streamed tokens of the request (no stall longer than this)",
    "e2e": "send to the end of the stream",
}

def request_meets(rec: dict[str, Any], slo: dict[str, float]) -> dict[str, bool]:
    """Which SLOs one request meets; a failed request meets none."""
    if not rec.get("ok"):
        return {k: False for k in slo}
    ttft, e2e, tokens = rec.get("ttft"), rec.get("e2e"), rec.get("tokens") or 0
    gaps = rec.get("itl") or []
    value = {
        "ttft": ttft,
        "e2e": e2e,
        "tpot": (e2e - ttft) / (tokens - 1) if tokens > 1 and ttft is not None and e2e is not None else 0.0,
        "itl": max(gaps, default=0.0),
    }
    return {k: value[k] is not None and value[k] <= limit for k, limit in slo.items()}


def goodput(records: list[dict[str, Any]], slo: dict[str, float], wall_s: float) -> dict[str, Any]:
    """Per SLO the share of requests that meet it, `all` for every one, and goodput per second of wall time."""
    n = len(records)
    met = [request_meets(r, slo) for r in records]
    good = [r for r, m in zip(records, met) if all(m.values())]
    share = {k: (sum(m[k] for m in met) / n if n else None) for k in slo}
    return {
        "slo": dict(slo),
        "requests": n,
        "attainment": {**share, "all": len(good) / n if n else None},
        "good_requests": len(good),
        "goodput_rps": len(good) / wall_s if wall_s > 0 else None,
        "goodput_tps": sum(r.get("tokens") or 0 for r in good) / wall_s if wall_s > 0 else None,
    }


PERCENTILES = (50, 90, 99)


def percentile(values: list[float], p: float) -> float:
    """numpy's default (linear) percentile, without numpy."""
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    return {f"p{p}": percentile(vals, p) for p in PERCENTILES} | {"mean": sum(vals) / len(vals)}


def request_tpot(rec: dict[str, Any]) -> float | None:
    tokens, ttft, e2e = rec.get("tokens") or 0, rec.get("ttft"), rec.get("e2e")
    return (e2e - ttft) / (tokens - 1) if rec.get("ok") and tokens > 1 and ttft is not None and e2e is not None else None


def serving_metrics(extras: list[dict[str, Any] | None], slo: dict[str, float] | None) -> dict[str, Any]:
    """A serving cell over all its timed passes: request counts, TTFT/TPOT/ITL/E2E percentiles over every request,
    throughput per second of wall time, and with an SLO its attainment and goodput."""
    passes = [e for e in extras if e and "requests_log" in e]
    records = [r for e in passes for r in e["requests_log"]]
    wall = sum(e.get("wall_s") or 0.0 for e in passes)
    ok = [r for r in records if r.get("ok")]
    tokens = sum(r.get("tokens") or 0 for r in ok)
    out: dict[str, Any] = {
        "passes": len(passes),
        "requests": len(records),
        "failed": len(records) - len(ok),
        "concurrency": passes[-1].get("concurrency") if passes else None,
        "request_rate": passes[-1].get("request_rate") if passes else None,
        "wall_s": wall,
        "request_throughput": len(ok) / wall if wall > 0 else None,
        "output_tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_s": summary([r.get("ttft") for r in ok]),
        "tpot_s": summary([request_tpot(r) for r in ok]),
        "itl_s": summary([g for r in ok for g in r.get("itl") or []]),
        "e2e_s": summary([r.get("e2e") for r in ok]),
    }
    gaps = [g for r in ok for g in r.get("itl") or [] if isinstance(g, (int, float))]
    out["merged_gap_share"] = sum(g < MERGED_GAP_S for g in gaps) / len(gaps) if gaps else None
    # a first chunk merged with the next reads the later one's arrival: that request's TTFT is late
    firsts = [(r.get("itl") or [1.0])[0] for r in ok if r.get("itl")]
    out["ttft_merged_share"] = sum(isinstance(g, (int, float)) and g < MERGED_GAP_S for g in firsts) / len(firsts) \
        if firsts else None  # fmt: skip
    if out["tpot_s"]["p50"]:
        out["tokens_per_s_per_user"] = 1.0 / out["tpot_s"]["p50"]  # interactivity, the Pareto view's x axis
    if slo:
        out["goodput"] = goodput(records, slo, wall)
    return out


# --- the comparison metrics of serving cells (store/vocabulary.py names them) -------------------------------


def _pick(figures: dict[str, Any], metric: str) -> float | None:
    """Stored figures are data (an import may hold anything): a value that is not a number is None."""

    def at(d: Any, key: str) -> Any:
        return d.get(key) if isinstance(d, dict) else None

    good = at(figures, "goodput")
    if metric == "goodput_rps":
        value = at(good, "goodput_rps")
    elif metric == "slo_attainment":
        value = at(at(good, "attainment"), "all")
    else:
        name, _, pct = metric.rpartition("_p")  # ttft_p99 -> ttft_s p99
        value = at(at(figures, f"{name}_s"), f"p{pct}") if pct.isdigit() else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


SERVING_METRICS = ("goodput_rps", "slo_attainment", "ttft_p99", "itl_p99")


def cell_value(cell: dict[str, Any], metric: str) -> float | None:
    """A serving metric of a stored cell (None for cells of other engines, or without an SLO for goodput)."""
    figures = (cell.get("metrics") or {}).get("serving")
    return _pick(figures, metric) if isinstance(figures, dict) else None


def repeat_value(rep: dict[str, Any], cell: dict[str, Any], metric: str) -> float | None:
    """The same metric over one repeat's requests only: the per-repeat values the intervals are computed from."""
    figures = (cell.get("metrics") or {}).get("serving") or {}
    slo = (figures.get("goodput") or {}).get("slo")
    extras = rep.get("extra") if isinstance(rep.get("extra"), list) else []
    if not extras:
        return None
    return _pick(serving_metrics(extras, slo if isinstance(slo, dict) else None), metric)


def brief(cell: dict[str, Any]) -> str:
    """A finished serving cell in a few words for Live's results: requests, TTFT p99, SLO met and goodput."""
    figures = (cell.get("metrics") or {}).get("serving")
    if not isinstance(figures, dict):
        return ""

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None

    parts = []
    failed, sent = num(figures.get("failed")), num(figures.get("requests"))
    if failed is not None and sent is not None:
        parts.append(f"{sent - failed:.0f}/{sent:.0f} ok")
    if (ttft := num(_pick(figures, "ttft_p99"))) is not None:
        parts.append(f"TTFT p99 {ttft * 1000:,.0f} ms")
    if (met := num(_pick(figures, "slo_attainment"))) is not None:
        parts.append(f"SLO {met:.0%}")
    if (rps := num(_pick(figures, "goodput_rps"))) is not None:
        parts.append(f"goodput {rps:,.3g} req/s")
    return " · ".join(parts)
