"""Compare's needle view: per needle run, retrieval accuracy over context length x depth, coloured from red (0 %)
to green (100 %): the usual needle-in-a-haystack heat map. The grid is store.workload_tables', as the Markdown
export draws it. Nothing is drawn for runs of other workloads."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text
from textual.widgets import Static

# Accuracy buckets from worst to best: a colour that reads on a terminal without truecolour too.
SHADES = ("white on red3", "black on dark_orange", "black on yellow3", "black on green3")


def shade(value: float) -> str:
    return SHADES[min(len(SHADES) - 1, int(value * len(SHADES)))]


def needle_group(results: list[Any]) -> Group | None:
    from store.tables import title_of
    from store.workload_tables import needle_grid, percent

    parts: list[Any] = []
    for r in results:
        contexts, depths, grid = needle_grid(r)
        if not grid:
            continue
        parts += [Text(""), Text(f"needle retrieval accuracy: {title_of(r)}", style="bold")]
        t = RichTable(header_style="bold", box=None, padding=(0, 1))
        t.add_column("depth \\ context", justify="right")
        for n in contexts:
            t.add_column(str(n), justify="center", min_width=6)
        for d in depths:
            values = [grid.get((n, d)) for n in contexts]
            t.add_row(f"{d}%", *(Text("-", style="dim") if v is None else Text(percent(v), style=shade(v))
                                   for v in values))  # fmt: skip
        parts.append(t)
    if not parts:
        return None
    parts.append(Text("share of answers that hold the planted value; depth 0% = the top of the haystack", style="dim"))
    return Group(*parts)


class NeedleMap(Static):
    """Empty (and taking no room) unless a compared run is a needle run."""

    group: Group | None = None  # what is drawn, kept for tests and copies

    def load(self, results: list[Any]) -> None:
        self.group = group = needle_group(results)
        self.display = group is not None
        if group is not None:
            self.update(group)
