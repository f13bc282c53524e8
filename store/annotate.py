"""The notes under a comparison: what each run's cells add up to, why a figure may not be trusted (cell
flags, run notes) and what differs between the runs' environments. Plain strings, shared by every view."""

from __future__ import annotations

import math
from typing import Any

from store.significance import Comparison

FLAG_MARK = "⚑"
FLAG_LINES = 4  # distinct flag reasons listed; the exports carry every flag
ENV_LINES = 8
# What each code of store.flags means, said once under a table that shows it.
FLAG_CODES = {
    "cv": "the repeats of the cell vary by more than 5% (coefficient of variation)",
    "load": "other processes used CPU while the cell was timed",
    "steal": "the hypervisor took CPU time from this machine (steal)",
    "clock": "the CPU or GPU clock moved while the cell was timed",
    "throttle": "the GPU throttled (power, temperature or clocks)",
    "gpu-shared": "other processes used the GPU while the cell was timed",
    "failed-requests": "some requests of a serving cell failed; its latencies cover the others",
    "merged": "streamed tokens of a serving cell arrived merged (a busy client): its ITL is shaky",
}


def cell_flags(cell: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A cell's flags; rows stored before flags existed have none (missing or None)."""
    return [f for f in (cell or {}).get("flags") or [] if isinstance(f, dict)]


def flag_codes(cell: dict[str, Any] | None) -> list[str]:
    return list(dict.fromkeys(str(f.get("code", "?")) for f in cell_flags(cell)))


def cut(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_line(title: str, comparisons: dict[tuple, Comparison], higher_better: bool, memory: bool) -> str:
    """`T vs baseline: 2 of 6 cells differ significantly (2 faster, 0 slower); geometric mean … 1.31×`."""
    compared = [c for c in comparisons.values() if c.ratio is not None]
    sig = [c for c in compared if c.significant]
    if not sig:
        return f"{title} vs baseline: no cell of {len(compared)} differs significantly"
    good, bad = ("smaller", "larger") if memory else ("faster", "slower")
    better = sum((c.ratio > 1) == higher_better for c in sig)
    geo = math.exp(sum(math.log(c.ratio) for c in sig) / len(sig))
    return (f"{title} vs baseline: {len(sig)} of {len(compared)} cells differ significantly "
            f"({better} {good}, {len(sig) - better} {bad}); geometric mean of the significant ratios {geo:.2f}×")  # fmt: skip


def flag_lines(located: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """`⚑ load: other processes used … (where; where)` once per distinct reason; `located` = [(where, cell)]."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    for where, cell in located:
        for f in cell_flags(cell):
            by_reason.setdefault((str(f.get("code", "?")), str(f.get("reason", ""))), []).append(where)
    items = list(by_reason.items())
    lines = []
    for (code, reason), places in items[:FLAG_LINES]:
        more = f"; +{len(places) - 2} more" if len(places) > 2 else ""
        lines.append(f"{FLAG_MARK} {code}: {cut(reason, 80)} ({'; '.join(places[:2])}{more})")
    rest: dict[str, int] = {}
    for (code, _), places in items[FLAG_LINES:]:
        rest[code] = rest.get(code, 0) + len(places)
    if rest:
        counts = ", ".join(f"{code} in {n}" for code, n in rest.items())
        lines.append(f"{FLAG_MARK} … and {counts} more (the CSV and JSON exports list every flag)")
    return lines


def code_lines(codes: list[str]) -> list[str]:
    """One line explaining each flag code shown (codes this version does not know are named as they are)."""
    known = [f"{c}: {FLAG_CODES[c]}" for c in codes if c in FLAG_CODES]
    other = [c for c in codes if c not in FLAG_CODES]
    lines = [f"{FLAG_MARK} flags: " + "; ".join(known)] if known else []
    return lines + ([f"{FLAG_MARK} other flags: {', '.join(other)}"] if other else [])


def run_note_lines(titles: list[str], runs: list[dict[str, Any]]) -> list[str]:
    """Each run's notes (e.g. a fall-back to the sequential schedule), one line per distinct note."""
    by_note: dict[str, list[str]] = {}
    for title, run in zip(titles, runs):
        for note in run.get("notes") or []:
            by_note.setdefault(str(note), []).append(title)
    return [f"note ({'all runs' if len(who) == len(runs) > 1 else ', '.join(who)}): {note}" for note, who in by_note.items()]


def env_lines(results: list[Any]) -> list[str]:
    """`environment differs: $OMP_NUM_THREADS: 1 | 2`, values in the runs' order."""
    from store.envdiff import diff_lines

    lines = [f"environment differs: {line}" for line in diff_lines(results)]
    if len(lines) > ENV_LINES:
        lines = lines[: ENV_LINES - 1] + [f"environment differs in {len(lines) - ENV_LINES + 1} more values"]
    return lines
