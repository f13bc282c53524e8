"""codebench against an engine's own benchmark tool, on the same cells, round by round.

Each round holds one codebench run and the peer tool's runs (imported: store.peers). A figure is paired per round
(codebench's, then the tool's own as it reported it), so the ratio's interval comes from the rounds: a 95 % t
interval on the log ratios, around their geometric mean. The median and spread (max - min over the median) of the
ratios are shown as well. The verdict: `within` the target when the median is within it; `outside` when it is not
and the interval (if any) lies wholly outside it too; `noise` when the median is outside but the interval reaches
into the target band, so more rounds are needed to tell. A round where either side has no figure (missing, or 0
as a starved client's merged ITL) is left out of the ratio, and the table says how many and why.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from store.significance import log_halfwidth

TARGET = 0.03  # codebench / the tool within 3 %


@dataclass
class Pairing:
    figure: str  # e.g. "decode tok/s"
    cell: str  # e.g. "b=2 in=32 out=16"
    peer: str  # e.g. "llama-batched-bench"
    ours: list[float] = field(default_factory=list)  # one per round
    theirs: list[float] = field(default_factory=list)
    why: str = ""  # a definition that differs, said next to the ratio
    # Per round left out, which side had no figure (missing, 0 or not finite): a ratio needs both
    dropped: list[str] = field(default_factory=list)

    def add(self, ours: Any, theirs: Any) -> None:
        if _positive(ours) and _positive(theirs):
            self.ours.append(float(ours))
            self.theirs.append(float(theirs))
        else:
            self.dropped.append("both" if not (_positive(ours) or _positive(theirs)) else
                                "tool" if _positive(ours) else "codebench")  # fmt: skip

    def summary(self) -> dict[str, Any]:
        ratios = [a / b for a, b in zip(self.ours, self.theirs)]
        out: dict[str, Any] = {"figure": self.figure, "cell": self.cell, "peer": self.peer, "rounds": len(ratios),
                               "codebench": _median(self.ours), "tool": _median(self.theirs), "why": self.why,
                               "dropped": len(self.dropped)}  # fmt: skip
        if not ratios:
            return {**out, "ratio": None, "low": None, "high": None, "median": None, "spread": None, "within": None,
                    "verdict": None}  # fmt: skip
        geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
        half = log_halfwidth(ratios)
        med = statistics.median(ratios)
        low, high = (geo * math.exp(-half), geo * math.exp(half)) if half is not None else (None, None)
        return {**out, "ratio": geo, "low": low, "high": high, "median": med,
                "spread": (max(ratios) - min(ratios)) / med, "within": abs(med - 1) <= TARGET,
                "verdict": _verdict(med, low, high)}  # fmt: skip


def _verdict(median: float, low: float | None, high: float | None) -> str:
    if abs(median - 1) <= TARGET:
        return "within"
    if low is not None and high is not None and low <= 1 + TARGET and high >= 1 - TARGET:
        return "noise"  # the interval reaches the band: these rounds cannot tell
    return "outside"


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def find(cells: list[dict[str, Any]], batch: int, input_len: int | None = None, output_len: int | None = None,
         **params: Any) -> dict[str, Any] | None:  # fmt: skip
    """A done cell of that shape (None: any length)."""
    for c in cells:
        if c.get("status") == "done" and c["batch"] == batch and input_len in (None, c["input_len"]) and \
                output_len in (None, c["output_len"]) and all((c.get("params") or {}).get(k) == v for k, v in params.items()):  # fmt: skip
            return c
    return None


def prompt_tps(c: dict[str, Any] | None) -> float | None:
    """Prompt tokens per second of a codebench cell: its batch's prompts over its TTFT."""
    if not c or not _positive(c.get("ttft_s")):
        return None
    return c["batch"] * c["input_len"] / c["ttft_s"]


def peer(c: dict[str, Any] | None, key: str) -> float | None:
    """The tool's own figure, as imported (metrics.peer)."""
    value = ((c or {}).get("metrics") or {}).get("peer", {}).get(key)
    return value if _positive(value) else None


def table_rows(pairings: list[Pairing], fmt: Callable[[float | None], str]) -> list[list[str]]:
    rows = []
    for p in pairings:
        s = p.summary()
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.3f}" + (
            f" ({s['low']:.3f}–{s['high']:.3f})" if s["low"] is not None else "")  # fmt: skip
        verdict = VERDICTS.get(s["verdict"], "-")
        why = f": {p.why}" if p.why and s["verdict"] == "outside" else ""  # a reason is only needed for a gap
        left_out = _left_out(p.dropped)
        rounds = f"{s['rounds']} of {s['rounds'] + s['dropped']}" if left_out else str(s["rounds"])
        rows.append([p.figure, p.cell, p.peer, fmt(s["codebench"]), fmt(s["tool"]), ratio,
                     "-" if s["spread"] is None else f"{s['spread'] * 100:.1f}%", rounds,
                     "; ".join(x for x in (verdict + why if s["verdict"] else "", left_out) if x) or "-"])  # fmt: skip
    return rows


def _left_out(dropped: list[str]) -> str:
    """Why rounds are missing from the ratio: e.g. a starved client's merged tokens give an ITL of 0."""
    names = {"codebench": "codebench's figure", "tool": "the tool's figure", "both": "either figure"}
    parts = [f"{dropped.count(side)} without {name} (0 or missing)" for side, name in names.items() if side in dropped]
    return ("rounds left out: " + ", ".join(parts)) if parts else ""


VERDICTS = {"within": "within ±3%", "outside": "outside ±3%",
            "noise": "not decided: the interval reaches ±3%; more --rounds"}
HEADERS = ["figure", "cell", "tool", "codebench", "tool's", "codebench ÷ tool (95% CI)", "spread", "rounds", "verdict"]
