"""A host's noise floor: how far the ratios of two identical runs (an A/A pair) stray from 1.

`codebench-tui noise` runs one configuration twice, interleaved, and stores per metric the 95th
percentile of |log(ratio)| over the cells, as a relative change (0.04 = 4 %), keyed by the host and the
kind of device. Compare treats a ratio whose change is within the floor of the runs' host as noise.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from sqlmodel import Session, col, select

from store.models import NoiseFloor
from store.results import RunResult

METRICS = ("tokens_per_s", "latency_s", "ttft_s", "decode_tps")
QUANTILE = 0.95


def device_kind(device: str | None) -> str:
    return "cuda" if (device or "").startswith("cuda") else "cpu"


def host_key(host: dict[str, Any] | None, device: str | None) -> str:
    """The same machine and kind of device: hostname, CPU, thread count and GPU models."""
    h = host if isinstance(host, dict) else {}
    gpus = [g.get("name") for g in h.get("gpus") or [] if isinstance(g, dict)]
    ident = [h.get("hostname"), h.get("cpu"), h.get("cpu_logical"), gpus, device_kind(device)]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def aa_ratios(a: RunResult, b: RunResult, metric: str) -> list[float]:
    """b / a per cell both measured, for one metric."""
    cells_a = {a.cell_key(c): c for c in a.cells if c["status"] == "done"}
    out = []
    for c in b.cells:
        ref = cells_a.get(b.cell_key(c))
        if c["status"] == "done" and ref and c.get(metric) and ref.get(metric):
            out.append(c[metric] / ref[metric])
    return out


def floor_of(ratios: list[float]) -> float | None:
    if not ratios:
        return None
    return math.exp(quantile([abs(math.log(r)) for r in ratios], QUANTILE)) - 1


def save(a: RunResult, b: RunResult, *, session: Session) -> dict[str, NoiseFloor]:
    """Store the floors an A/A pair measured; returns them by metric."""
    key = host_key(a.run.get("host"), a.run.get("device"))
    out = {}
    for metric in METRICS:
        ratios = aa_ratios(a, b, metric)
        floor = floor_of(ratios)
        if floor is None:
            continue
        row = NoiseFloor(host_key=key, metric=metric, floor=floor, cells=len(ratios), ratios=ratios,
                         run_ids=[a.id, b.id], label=a.run.get("label") or "", host=a.run.get("host") or {},
                         created_at=time.time())  # fmt: skip
        session.add(row)
        out[metric] = row
    return out


def latest(key: str, *, session: Session) -> dict[str, NoiseFloor]:
    rows = session.exec(select(NoiseFloor).where(NoiseFloor.host_key == key).order_by(col(NoiseFloor.created_at)))
    return {r.metric: r for r in rows}  # later rows win


def floors_of(db: Any, results: list[RunResult]) -> tuple[dict[str, float], str]:
    """floors_for in a session of its own; nothing to compare (fewer than two runs), no floors."""
    if len(results) < 2:
        return {}, ""
    with db.session() as s:
        return floors_for(results, session=s)


def floors_for(results: list[RunResult], *, session: Session) -> tuple[dict[str, float], str]:
    """Floors per metric for the hosts of `results` (the largest where they differ), and a note for the reader."""
    keys = {host_key(r.run.get("host"), r.run.get("device")): r for r in results}
    found = {k: latest(k, session=session) for k in keys}
    missing = [r for k, r in keys.items() if not found[k]]
    floors: dict[str, float] = {}
    for rows in found.values():
        for metric, row in rows.items():
            floors[metric] = max(floors.get(metric, 0.0), row.floor)
    where = f"{len(keys)} hosts" if len(keys) > 1 else "this host"
    if missing:
        names = ", ".join(sorted({str((r.run.get("host") or {}).get("hostname") or "?") for r in missing}))
        return floors, (f"no noise floor measured for {names} ({device_kind(missing[0].run.get('device'))}) yet: "
                        "`codebench-tui noise` measures it; until then only the 95% interval decides")
    parts = ", ".join(f"{m} ±{v * 100:.1f}%" for m, v in floors.items())
    return floors, f"noise floor of {where} (A/A): {parts}"
