"""--search peak-goodput: per configuration, the highest concurrency (or request rate) whose SLO attainment stays
at or above the target, found by bisection over that axis instead of measuring every value.

Cells that differ only in the searched axis form one search; each search measures about log2(n) of its n values,
assuming attainment falls as the load rises. A failed, crashed or out-of-memory cell does not meet the target.
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
    values: list[float]  # the searched axis, ascending
    indices: list[int]
    lo: int = -1  # the highest candidate known to meet the target
    hi: int = 0  # the lowest candidate known to miss it (len(values): none yet)
    path: list[dict[str, Any]] = field(default_factory=list)

    def next(self) -> int | None:
        if self.hi - self.lo <= 1:
            return None
        return self.indices[(self.lo + self.hi) // 2]


def _rate(cell: Cell) -> float:
    return float(dict(cell.extra).get("request_rate", float("inf")))


class PeakSearch:
    def __init__(self, cells: list[Cell], target: float, axis: str = "concurrency"):
        self.target, self.axis = target, axis
        value = (lambda c: c.batch) if axis == "concurrency" else _rate
        lines: dict[tuple, _Line] = {}
        for index, cell in sorted(enumerate(cells), key=lambda ic: value(ic[1])):
            rest = {k: v for k, v in cell.params().items() if axis == "concurrency" or k != "request_rate"}
            key = {"input_len": cell.input_len, "output_len": cell.output_len, **rest}
            if axis != "concurrency":
                key["concurrency"] = cell.batch
            line = lines.setdefault(tuple(sorted(map(str, key.items()))), _Line(key, [], []))
            line.values.append(value(cell))
            line.indices.append(index)
        self.lines = list(lines.values())
        for line in self.lines:
            line.hi = len(line.values)
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
        line.path.append({self._name: self._shown(line.values[pos]), "status": status, "attainment": attained,
                          "goodput_rps": good.get("goodput_rps"), "met": met})  # fmt: skip
        if met:
            line.lo = max(line.lo, pos)
        else:
            line.hi = min(line.hi, pos)

    @property
    def _name(self) -> str:
        return "concurrency" if self.axis == "concurrency" else "request_rate"

    @staticmethod
    def _shown(value: float) -> float | str:
        return "inf" if value == float("inf") else value

    def unmeasured(self) -> list[int]:
        return sorted(i for line in self.lines for i in line.indices if i not in self.measured)

    def summary(self) -> dict[str, Any]:
        out = []
        for line in self.lines:
            peak = self._shown(line.values[line.lo]) if line.lo >= 0 else None
            at_peak = next((p for p in line.path if p[self._name] == peak), {})
            out.append({**line.key, f"peak_{self._name}": peak, "goodput_rps": at_peak.get("goodput_rps"),
                        "candidates": [self._shown(b) for b in line.values], "path": line.path,
                        "bounded": line.hi < len(line.values)})  # fmt: skip
        return {"kind": "peak-goodput", "target": self.target, "axis": self._name, "searches": out}
