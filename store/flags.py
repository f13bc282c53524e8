"""Why a cell's figure may not be trusted, from its stored repeats: each flag is a code and a reason in words.

The worker records per timed repeat what else the machine was doing (engines/measure/contention.py); this
module turns that, and the spread of the repeats, into flags. Pure functions: a stored cell's flags
can be recomputed from its repeats.
"""

from __future__ import annotations

import statistics
from typing import Any

from store.metrics import repeat_means

CV_LIMIT = 0.05  # coefficient of variation of the repeat means above which a cell is shaky
LOAD_CORES = 0.25  # other processes' CPU use (cores, at least this or 5% of the machine) that counts as contention
LOAD_SHARE = 0.05
STEAL_LIMIT = 0.02  # share of all CPU time the hypervisor took
CLOCK_CHANGE = 0.10  # a CPU or GPU clock that moved by more than this between snapshots


def _flag(code: str, reason: str) -> dict[str, str]:
    return {"code": code, "reason": reason}


def _spread(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v]
    if len(values) < 2 or max(values) <= 0:
        return None
    lo, hi = min(values), max(values)
    return (lo, hi) if (hi - lo) / hi > CLOCK_CHANGE else None


def cell_flags(repeats: list[dict[str, Any]], metrics: dict[str, Any] | None = None) -> list[dict[str, str]]:
    flags = []
    means = repeat_means(repeats)
    if len(means) >= 2 and statistics.fmean(means) > 0:
        cv = statistics.stdev(means) / statistics.fmean(means)
        if cv > CV_LIMIT:
            flags.append(_flag("cv", f"repeats vary by {cv * 100:.0f}% (coefficient of variation; "
                                     f"over {CV_LIMIT * 100:.0f}% is shaky)"))  # fmt: skip
    hosts = [r["host"] for r in repeats if isinstance(r.get("host"), dict)]
    if hosts:
        cores = hosts[0].get("cores") or 1
        others = statistics.fmean(h.get("other_cores", 0.0) for h in hosts)
        worst = max(h.get("other_cores", 0.0) for h in hosts)
        if others > max(LOAD_CORES, LOAD_SHARE * cores) or worst > 2 * max(LOAD_CORES, LOAD_SHARE * cores):
            flags.append(_flag("load", f"other processes used {others:.2f} of {cores} CPU cores during the timed "
                                       f"repeats (up to {worst:.2f})"))  # fmt: skip
        steals = [h["steal_share"] for h in hosts if h.get("steal_share") is not None]
        if steals and statistics.fmean(steals) > STEAL_LIMIT:
            flags.append(_flag("steal", f"the hypervisor took {statistics.fmean(steals) * 100:.1f}% of CPU time (steal)"))
        cpu = _spread([m for h in hosts for m in h.get("cpu_mhz") or []])
        if cpu:
            flags.append(_flag("clock", f"CPU clock moved between {cpu[0]:.0f} and {cpu[1]:.0f} MHz"))
        flags += _gpu_flags(hosts)
    flags += _serving_flags((metrics or {}).get("serving"))
    throttle = ((metrics or {}).get("efficiency") or {}).get("throttle") or []
    if throttle and not any(f["code"] == "throttle" for f in flags):
        flags.append(_flag("throttle", f"GPU throttled ({', '.join(throttle)})"))
    return flags


MERGED_LIMIT = 0.05  # share of token gaps that arrived merged before ITL is called shaky
TTFT_MERGED_LIMIT = 0.01  # share of requests whose first token arrived merged: their TTFT sits in the p99


def _serving_flags(s: Any) -> list[dict[str, str]]:
    """A serving cell: requests that failed, and token gaps that arrived merged (the client read late)."""
    if not isinstance(s, dict):
        return []
    flags = []
    failed, sent = s.get("failed"), s.get("requests")
    if isinstance(failed, int) and failed > 0 and isinstance(sent, int):
        flags.append(_flag("failed-requests", f"{failed} of {sent} requests failed; latencies cover the rest"))
    merged, first = s.get("merged_gap_share"), s.get("ttft_merged_share")
    gaps_shaky = isinstance(merged, (int, float)) and merged > MERGED_LIMIT
    ttft_shaky = isinstance(first, (int, float)) and first > TTFT_MERGED_LIMIT
    if gaps_shaky or ttft_shaky:
        parts = ([f"{merged * 100:.0f}% of the gaps between streamed tokens"] if gaps_shaky else []) + \
                ([f"the first token of {first * 100:.0f}% of requests"] if ttft_shaky else [])  # fmt: skip
        flags.append(_flag("merged", f"{' and '.join(parts)} came merged with the next (the kernel joins segments "
                                     "a busy client has not read yet, and stamps them with the later arrival): "
                                     f"{'ITL' if gaps_shaky else ''}{' and ' if gaps_shaky and ttft_shaky else ''}"
                                     f"{'TTFT tails' if ttft_shaky else ''} are shaky"))  # fmt: skip
    return flags


def _gpu_flags(hosts: list[dict[str, Any]]) -> list[dict[str, str]]:
    by_gpu: dict[int, list[dict[str, Any]]] = {}
    for h in hosts:
        for g in h.get("gpus") or []:
            by_gpu.setdefault(g.get("index", 0), []).append(g)
    flags = []
    reasons = sorted({t for gs in by_gpu.values() for g in gs for t in g.get("throttle") or []})
    if reasons:
        gpus = ", ".join(str(i) for i, gs in by_gpu.items() if any(g.get("throttle") for g in gs))
        flags.append(_flag("throttle", f"GPU {gpus} throttled ({', '.join(reasons)})"))
    for i, gs in by_gpu.items():
        sm = _spread([m for g in gs for m in g.get("sm_mhz") or []])
        if sm:
            flags.append(_flag("clock", f"GPU {i} SM clock moved between {sm[0]:.0f} and {sm[1]:.0f} MHz"))
        others = sorted({p for g in gs for p in g.get("other_pids") or []})
        if others:
            flags.append(_flag("gpu-shared", f"{len(others)} other process(es) used GPU {i} (pid {', '.join(map(str, others[:4]))})"))
    return flags


def flag_codes(cell: dict[str, Any]) -> list[str]:
    return [f.get("code", "?") for f in cell.get("flags") or [] if isinstance(f, dict)]
