"""The serving trade-off: throughput per device against interactivity, and its Pareto frontier.

Every done cell of every run is a point: x = tokens/s per user (1 / TPOT p50 for a serving cell; for an
in-process engine its decode tokens/s per sequence), y = output tokens/s per device (per GPU: divided by the
run's tensor-parallel size on a GPU; per host on the CPU). With `goodput`, y counts only the tokens of requests
that met every SLO. The frontier holds the points no other point beats on both axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from store.results import RunResult, run_title
from store.safe import NAME, shown
from store.tables import Table, fmt


@dataclass(frozen=True)
class Point:
    run: str  # the run's title, for the legend
    run_index: int
    cell: str  # e.g. "c=8 in=128 out=128 rate=inf"
    per_user: float  # tokens/s per user
    per_device: float  # tokens/s per GPU or host


def _devices(r: RunResult) -> int:
    """GPUs a run's model is spread over: --tp, or a server's own tensor x pipeline parallel options."""
    if not str(r.run.get("device") or "").startswith("cuda"):
        return 1
    config = r.run.get("config") or {}
    options = config.get("options") if isinstance(config.get("options"), dict) else {}

    def size(v: Any) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 else 1

    return max(size(config.get("tp")), size(options.get("tensor_parallel_size")) * size(options.get("pipeline_parallel_size")))


def _cell_label(c: dict[str, Any]) -> str:
    params = c.get("params") or {}
    rate = f" rate={shown(params['request_rate'], NAME)}" if "request_rate" in params else ""
    return f"c={c['batch']} in={c['input_len']} out={c['output_len']}{rate}"


def points(results: list[RunResult], goodput: bool = False) -> list[Point]:
    out = []
    for i, r in enumerate(results):
        per = _devices(r)
        for c in r.cells:
            if c.get("status") != "done":
                continue
            s = (c.get("metrics") or {}).get("serving")
            if isinstance(s, dict):
                tpot = (s.get("tpot_s") or {}).get("p50")
                user = 1.0 / tpot if isinstance(tpot, (int, float)) and tpot > 0 else None
                good = s.get("goodput") if isinstance(s.get("goodput"), dict) else {}
                total = good.get("goodput_tps") if goodput else s.get("output_tokens_per_s")
            elif goodput:
                continue  # only serving cells have an SLO
            else:
                decode, batch = c.get("decode_tps"), c.get("batch") or 1
                user = decode / batch if isinstance(decode, (int, float)) else None
                total = c.get("tokens_per_s")
            if isinstance(user, (int, float)) and isinstance(total, (int, float)) and user > 0 and total >= 0:
                out.append(Point(run_title(r), i, _cell_label(c), float(user), float(total) / per))
    return out


def frontier(pts: list[Point]) -> list[Point]:
    """The points no other beats on both axes, by interactivity ascending."""
    best: list[Point] = []
    for p in sorted(pts, key=lambda p: (-p.per_user, -p.per_device)):
        if not best or p.per_device > best[-1].per_device:
            best.append(p)
    return best[::-1]


def pareto_table(results: list[RunResult], goodput: bool = False) -> Table | None:
    pts = points(results, goodput)
    if not pts:
        return None
    what = "goodput tok/s" if goodput else "tok/s"
    unit = "per GPU" if any(_devices(r) > 1 or str(r.run.get("device") or "").startswith("cuda") for r in results) \
        else "per host"  # fmt: skip
    rows = [[shown(p.run, NAME), p.cell, fmt(p.per_user), fmt(p.per_device)] for p in frontier(pts)]
    notes = [f"the Pareto frontier of {len(pts)} cells: none of the others is better on both axes",
             "tok/s per user: 1 / TPOT p50 for a serving cell, decode tok/s per sequence for an in-process one"]
    if goodput:
        notes.append("goodput tok/s: output tokens of the requests that met every SLO, per second")
    return Table(f"Pareto frontier: {what} {unit} against tok/s per user", ["run", "cell", "tok/s per user",
                 f"{what} {unit}"], rows, notes)  # fmt: skip
