"""Charts from stored results, for the Compare screen and the CLI alike: tokens/s and memory against batch, and
the speed-up heat map. No textual here: `codebench-tui compare` draws the same tokens/s chart."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text

from store.safe import NAME, shown


def figure(width: int, height: int) -> Any:
    from plotext._figure import _figure_class

    fig = _figure_class()
    fig.plot_size(width, height)
    fig.theme("pro")
    return fig


def series_chart(series: list[tuple[str, list[tuple[float, float]]]], width: int, height: int, *, title: str,
                 xlabel: str, ylabel: str) -> Text | None:  # fmt: skip
    """Lines from (name, [(x, y), ...]) with the x values as ticks."""
    series = [(n, pts) for n, pts in series if pts]
    if not series:
        return None
    fig = figure(width, height)
    for name, pts in series:
        fig.plot([p[0] for p in pts], [p[1] for p in pts], label=name, marker="hd")  # block quadrants: every font has them
    xs = sorted({p[0] for _, pts in series for p in pts})
    fig.xticks(xs, [f"{x:g}" for x in xs])
    fig.xlabel(xlabel)
    fig.ylabel(ylabel)
    fig.title(title)
    return Text.from_ansi(fig.build())


def _label(r: Any, n_runs: int, in_len: int, many_inputs: bool) -> str:
    name = shown(r.short_id) if n_runs > 1 else ""  # plotext's output is read back as ANSI: no escapes of ours
    return " ".join(p for p in (name, f"in={in_len}" if many_inputs or not name else "") if p)


def tokens_chart(results: list[Any], width: int, height: int) -> Text | None:
    """Generated tokens/s against batch size, a line per run (and input length where it varies)."""
    inputs = sorted({c["input_len"] for r in results for c in r.cells})
    series = []
    for r in results:
        for in_len in inputs:
            pts = sorted((c["batch"], c["tokens_per_s"]) for c in r.cells
                         if c["input_len"] == in_len and c["status"] == "done" and c.get("tokens_per_s"))  # fmt: skip
            series.append((_label(r, len(results), in_len, len(inputs) > 1), pts))
    return series_chart(series, width, height, title="generated tokens/s by batch size", xlabel="batch size",
                        ylabel="tokens/s")  # fmt: skip


def memory_chart(results: list[Any], width: int, height: int) -> Text | None:
    """Peak memory (MB) against batch size, a line per run (and input length where it varies)."""
    from store.tables import peak_mem

    inputs = sorted({c["input_len"] for r in results for c in r.cells})
    series = []
    for r in results:
        for in_len in inputs:
            pts = sorted((c["batch"], peak_mem(c) / 2**20) for c in r.cells
                         if c["input_len"] == in_len and c["status"] == "done" and peak_mem(c))  # fmt: skip
            series.append((_label(r, len(results), in_len, len(inputs) > 1), pts))
    return series_chart(series, width, height, title="peak memory by batch size", xlabel="batch size", ylabel="MB")


def _ratio_style(r: float | None) -> str:
    if r is None:
        return "dim"
    x = max(-1.0, min(1.0, math.log2(r) if r > 0 else -1.0))
    base = (60, 60, 60)
    target = (0, 150, 60) if x >= 0 else (170, 40, 40)
    mix = [int(b + (t - b) * abs(x)) for b, t in zip(base, target)]
    return f"bold white on rgb({mix[0]},{mix[1]},{mix[2]})"


def speedup_grids(results: list[Any], baseline: int, metric: str = "tokens_per_s",
                  floors: dict[str, float] | None = None) -> Group | Text:  # fmt: skip
    """Per run against the baseline: rows batch, columns input length, one grid per output length.

    Only significant ratios are coloured (store.significance); the others read ≈ on no colour."""
    from store.significance import compare
    from store.tables import METRICS

    if len(results) < 2:
        return Text("select two or more runs to see speed-ups", style="dim")
    label, higher = METRICS[metric]
    base = {r_key(c): c for c in results[baseline].cells if c["status"] == "done"}
    base_run = results[baseline].run
    floor = (floors or {}).get(metric)
    parts: list[Any] = []
    for i, r in enumerate(results):
        if i == baseline:
            continue
        cells = {r_key(c): c for c in r.cells}
        for out_len in sorted({k[2] for k in cells} | {k[2] for k in base}):
            batches = sorted({k[0] for k in (*cells, *base) if k[2] == out_len})
            inputs = sorted({k[1] for k in (*cells, *base) if k[2] == out_len})
            base_name = f"{shown(results[baseline].short_id)} {shown(results[baseline].run['label'], NAME)}"
            parts.append(Text.assemble((f"{shown(r.short_id)} {shown(r.run['label'], NAME)}", "bold"), " vs ",
                                       (base_name, "cyan"),
                                       f"  out={out_len}  {label} " + ("ratio" if higher else "base/run")))  # fmt: skip
            t = RichTable(header_style="bold", box=None, padding=(0, 1))
            t.add_column("batch \\ in", justify="right")
            for in_len in inputs:
                t.add_column(str(in_len), justify="center", min_width=7)
            for b in batches:
                row: list[Text] = [Text(str(b), style="bold")]
                for in_len in inputs:
                    c, bc = cells.get((b, in_len, out_len)), base.get((b, in_len, out_len))
                    if c is None or bc is None:
                        row.append(Text("-", style="dim"))
                        continue
                    if c["status"] != "done":
                        row.append(Text("OOM" if c["status"] == "oom" else shown(c["status"], 12), style="bold red"))
                        continue
                    v = compare(c, bc, metric, run_a=r.run, run_b=base_run, floor=floor)
                    x = v.ratio if higher or v.ratio is None else 1 / v.ratio
                    if x is None:
                        row.append(Text("-", style="dim"))
                    elif v.significant:
                        row.append(Text(f"{x:.2f}×", style=_ratio_style(x)))
                    else:
                        row.append(Text(f"≈{x:.2f}×", style="dim"))
                t.add_row(*row)
            parts += [t, Text("")]
    parts.append(Text("coloured: the 95% interval excludes 1 (and the noise floor where measured); "
                      "≈ uncoloured: not significant", style="dim"))  # fmt: skip
    return Group(*parts)


def r_key(c: dict[str, Any]) -> tuple[int, int, int]:
    return (c["batch"], c["input_len"], c["output_len"])


def pareto_chart(results: list[Any], width: int, height: int, goodput: bool = False) -> Text | None:
    """Throughput per device against tokens/s per user: a point per cell, a marker per run, the frontier a line."""
    from store.pareto import frontier, points

    pts = points(results, goodput)
    if not pts:
        return None
    fig = figure(width, height)
    for i, r in enumerate(results):
        mine = [p for p in pts if p.run_index == i]
        if mine:
            name = shown(r.short_id) if len(results) > 1 else "cells"
            fig.scatter([p.per_user for p in mine], [p.per_device for p in mine], label=name, marker="hd")
    best = frontier(pts)
    fig.plot([p.per_user for p in best], [p.per_device for p in best], label="frontier", marker="dot")
    fig.xlabel("tokens/s per user")
    fig.ylabel("goodput tokens/s per device" if goodput else "tokens/s per device")
    fig.title("Pareto: throughput per device against interactivity" + (" (goodput)" if goodput else ""))
    return Text.from_ansi(fig.build())


def verdict_chart(verdict: Any, width: int, height: int) -> Text | None:
    """The verdict's candidates at its point: objective against peak memory, the frontier a line."""
    from store.verdict import GIB, OBJECTIVES

    entries = [e for e in verdict.ranked + verdict.unverified if e.value is not None and e.mem]
    if not entries:
        return None
    fig = figure(width, height)
    for e in entries:  # named at the point: a legend would cover the top left, where the best often sit
        fig.scatter([e.mem / GIB], [e.value], marker="hd")
        fig.text(shown(e.name, NAME)[:24], e.mem / GIB, e.value, alignment="left")
    best = sorted((e for e in verdict.frontier if e.value is not None and e.mem), key=lambda e: e.mem)
    if len(best) > 1:
        fig.plot([e.mem / GIB for e in best], [e.value for e in best], marker="dot")
    xs, ys = [e.mem / GIB for e in entries], [e.value for e in entries]
    fig.xlim(min(xs) * 0.9, max(xs) * 1.6)  # room for the names right of the points
    fig.ylim(min(ys) * 0.9, max(ys) * 1.1)
    fig.xlabel("peak memory GiB")
    fig.ylabel(OBJECTIVES[verdict.constraints.objective][0])
    fig.title("the candidates: objective against peak memory")
    return Text.from_ansi(fig.build())
