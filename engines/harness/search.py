"""--search peak-goodput: per configuration, the highest concurrency whose SLO attainment stays at or above the
target, found by bisection over the batch (concurrency) axis instead of measuring every value.

Cells that differ only in concurrency form one search; each search measures about log2(n) of its n values,
assuming attainment falls as concurrency rises. A failed, crashed or out-of-memory cell does not meet the target.
The cells a search never needed are stored as skipped, with the reason; the path (every measured concurrency,
its attainment and goodput) is stored in the run's runtime under "search".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engines.study.grid import Cell


@dataclass
class _Line:
    """One search: the candidate concurrencies (ascending) and the cell index of each."""

    key: dict[str, Any]
    batches: list[int]
    indices: list[int]
    lo: int = -1  # the highest candidate known to meet the target
    hi: int = 0  # the lowest candidate known to miss it (len(batches): none yet)
    path: list[dict[str, Any]] = field(default_factory=list)

    def next(self) -> int | None:
        if self.hi - self.lo <= 1:
            return None
        return self.indices[(self.lo + self.hi) // 2]


class PeakSearch:
    def __init__(self, cells: list[Cell], target: float):
        self.target = target
        lines: dict[tuple, _Line] = {}
        for index, cell in sorted(enumerate(cells), key=lambda ic: ic[1].batch):
            extra = tuple(cell.extra)
            k = (cell.input_len, cell.output_len, extra)
            line = lines.setdefault(k, _Line({"input_len": cell.input_len, "output_len": cell.output_len,
                                              **cell.params()}, [], []))  # fmt: skip
            line.batches.append(cell.batch)
            line.indices.append(index)
        self.lines = list(lines.values())
        for line in self.lines:
            line.hi = len(line.batches)
        self.measured: set[int] = set()

    def next(self) -> int | None:
        """The next cell to measure, or None when every search has converged."""
        for line in self.lines:
            index = line.next()
            if index is not None:
                return index
        return None

    def record(self, index: int, status: str, metrics: dict[str, Any] | None) -> None:
        self.measured.add(index)
        line = next(ln for ln in self.lines if index in ln.indices)
        pos = line.indices.index(index)
        serving = (metrics or {}).get("serving") or {}
        good = serving.get("goodput") or {}
        attained = (good.get("attainment") or {}).get("all") if status == "done" else None
        met = isinstance(attained, (int, float)) and attained >= self.target
        line.path.append({"concurrency": line.batches[pos], "status": status, "attainment": attained,
                          "goodput_rps": good.get("goodput_rps"), "met": met})  # fmt: skip
        if met:
            line.lo = max(line.lo, pos)
        else:
            line.hi = min(line.hi, pos)

    def unmeasured(self) -> list[int]:
        return sorted(i for line in self.lines for i in line.indices if i not in self.measured)

    def summary(self) -> dict[str, Any]:
        out = []
        for line in self.lines:
            peak = line.batches[line.lo] if line.lo >= 0 else None
            at_peak = next((p for p in line.path if p["concurrency"] == peak), {})
            out.append({**line.key, "peak_concurrency": peak, "goodput_rps": at_peak.get("goodput_rps"),
                        "candidates": line.batches, "path": line.path,
                        "bounded": line.hi < len(line.batches)})  # fmt: skip
        return {"kind": "peak-goodput", "target": self.target, "axis": "concurrency", "searches": out}
