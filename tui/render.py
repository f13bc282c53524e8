"""Terminal rendering for the headless paths: rich tables and a plotext chart. No textual, no torch."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table as RichTable
from rich.text import Text

from store.export import host_line, when
from store.results import RunResult
from store.safe import LINE, NAME, first_line, shown
from store.tables import Table
from tui.status import STATUS_STYLE, TABLE_STYLE


def rich_table(t: Table) -> RichTable:
    # collapse_padding: a run's cell table (flags, ±95% CI) must fit 80 columns without cropping numbers.
    # min_width: a title wider than a narrow table would wrap to the table's width, not the terminal's
    table = RichTable(title=Text(t.title), title_justify="left", header_style="bold", pad_edge=False,
                      collapse_padding=True, min_width=cell_len(t.title))  # fmt: skip
    for i, h in enumerate(t.headers):
        table.add_column(Text(h), justify="right")
    for row_i, row in enumerate(t.rows):
        styles = t.styles[row_i] if t.styles else [""] * len(row)
        table.add_row(*(Text(v, style=TABLE_STYLE.get(s, "")) for v, s in zip(row, styles)))
    if t.notes:
        table.caption = Text("\n".join(t.notes))
        table.caption_justify = "left"
    return table


def run_header(r: RunResult) -> Panel:
    """The run as a panel. Built from Text pieces: names, labels and errors are data, never markup; every
    stored string is shown (store.safe), so its escape sequences reach no terminal."""
    run = r.run
    counts = ", ".join(f"{n} {shown(s, NAME)}" for s, n in sorted(r.status_counts().items())) or "none"
    rt = run.get("runtime") or {}
    spec = run.get("spec") or {}
    versions = ", ".join(f"{shown(k, NAME)} {shown(v, NAME)}" for k, v in (rt.get("versions") or {}).items())
    lines = [
        Text.assemble((shown(run["label"], NAME), "bold"), "  on ", (shown(run["model"], LINE), "bold"),
                      f"  ({shown(run.get('device') or '?', NAME)})",
                      f"  name: {shown(run['name'], LINE)}" if run.get("name") else ""),
        Text.assemble(f"run {shown(run['id'][:12])}  status ", (shown(r.status, NAME), STATUS_STYLE.get(r.status, "")),
                      f"  started {when(run.get('created_at'))}  finished {when(run.get('finished_at'))}"),
        Text(f"cells: {counts} of {run.get('cells_total', '?')}"),
        Text(f"host: {shown(host_line(run), LINE)}"),
    ]  # fmt: skip
    if versions:
        lines.append(Text(f"versions: {shown(versions, LINE)}"))
    workload = spec.get("workload") or {}
    if workload.get("kind", "synthetic") != "synthetic":
        lines.append(Text(f"workload: {shown(workload['kind'], NAME)} ({shown(workload.get('content') or '?', NAME)})"))
    timing = spec.get("timing") or {}
    if timing and run.get("cells_total"):
        schedule = f", {shown(rt['schedule'], NAME)} schedule" if rt.get("schedule") else ""
        lines.append(Text(f"timing: {timing.get('warmup')} warm-up, {timing.get('iters')} timed x "
                          f"{timing.get('repeats')} repeats per cell{schedule}"))  # fmt: skip
    if isinstance(spec.get("load"), dict):  # a serving study's arrivals, per-pass size, SLO and search
        from engines.study.load import load_line

        lines.append(Text(f"load: {shown(load_line(spec['load']), LINE)}"))
    settings = " ".join(f"{k}={v}" for k, v in (spec.get("worker_env") or {}).items())
    if settings:  # what the study chose to set: robustness settings are opt-in and shown
        lines.append(Text(f"worker env set by the study: {shown(settings, LINE)}", style="yellow"))
    for note in run.get("notes") or []:
        lines.append(Text(f"note: {shown(note, LINE)}", style="yellow"))
    if run.get("error"):
        lines.append(Text(f"error: {first_line(run['error'])}", style="red"))
    return Panel(Text("\n").join(lines), expand=False)


def tokens_chart(results: list[RunResult], width: int = 80, height: int = 18) -> Text | None:
    """The Compare screen's tokens/s chart, at the console's size."""
    from tui.widgets import charts

    return charts.tokens_chart(results, width, height)


def _cell_short(c: dict) -> str:
    p = c.get("params") or {}
    if "shared_len" in p:
        return shown(f"N={c['batch']} P={p['shared_len']} U={p.get('suffix_len')} G={c['output_len']}", NAME)
    return f"b={c['batch']} in={c['input_len']} out={c['output_len']}"


MAX_BARS = 24


def breakdown_chart(results: list[RunResult], width: int = 80) -> Text | None:
    """Seed 004's stacked bars: ms per generated token in draft, verify forward and other, per run and cell.

    A speculative cell brings its matched run's bar along (stored in its reference), so one run replays alone.
    """
    from plotext._figure import _figure_class

    bars: list[tuple[str, dict]] = []
    seen: set[tuple] = set()
    for r in results:
        name = shown((r.run.get("config") or {}).get("spec") or r.run["label"], NAME)
        for c in r.cells:
            m = c.get("metrics") or {}
            ref = m.get("reference") or {}
            if c["status"] != "done" or not m.get("breakdown"):
                continue
            if ref.get("breakdown") and (ref.get("run_id"), _cell_short(c)) not in seen:
                ref_name = shown(str(ref.get("label", "reference")).rsplit("spec=", 1)[-1], NAME)
                bars.append((f"{ref_name} {_cell_short(c)}", ref["breakdown"]))
                seen.add((ref.get("run_id"), _cell_short(c)))
            if (r.id, _cell_short(c)) not in seen:
                bars.append((f"{name} {_cell_short(c)}", m["breakdown"]))
                seen.add((r.id, _cell_short(c)))
    if not bars:
        return None
    bars = bars[:MAX_BARS]
    fig = _figure_class()
    fig.plot_size(width, max(10, 3 * len(bars) + 6))
    fig.theme("pro")
    series = [[b[k] for _, b in bars] for k in ("draft_ms_per_token", "verify_ms_per_token", "other_ms_per_token")]
    fig.stacked_bar([n for n, _ in bars], series, labels=["draft", "verify forward", "other"], orientation="horizontal")
    fig.xlabel("ms per generated token")
    fig.title("time per generated token by phase")
    return Text.from_ansi(fig.build())


def speedup_chart(results: list[RunResult], width: int = 80, height: int = 16) -> Text | None:
    """Speed-up over the matched run against acceptance rate, one series per speculative method."""
    from plotext._figure import _figure_class

    series: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        name = shown((r.run.get("config") or {}).get("spec") or r.run["label"], NAME)
        for c in r.cells:
            m = c.get("metrics") or {}
            rate = (m.get("speculative") or {}).get("acceptance_rate")
            speedup = (m.get("reference") or {}).get("speedup")
            if c["status"] == "done" and rate is not None and speedup is not None:
                series.setdefault(name, []).append((rate, speedup))
    if not series:
        return None
    fig = _figure_class()
    fig.plot_size(width, height)
    fig.theme("pro")
    for name, pts in series.items():
        fig.scatter([x for x, _ in pts], [y for _, y in pts], label=name)
    fig.hline(1.0)
    fig.xlim(0, 1)
    fig.xlabel("acceptance rate")
    fig.ylabel("speed-up")
    fig.title("speed-up over the matched run vs acceptance rate")
    return Text.from_ansi(fig.build())


def print_speculative(console: Console, results: list[RunResult]) -> None:
    """The speculative-decoding table and its two charts, where the runs have the metrics."""
    from store.tables import speculative_table

    table = speculative_table(results)
    if not table.rows:
        return
    console.print(rich_table(table))
    width = min(console.width, 100)
    for chart in (breakdown_chart(results, width), speedup_chart(results, width)):
        if chart:
            console.print(chart)


def print_replay(console: Console, r: RunResult, table: Table, chart: bool = True) -> None:
    from store.tables import quality_table

    console.print(run_header(r))
    if r.cells:
        console.print(rich_table(table))
    if r.quality:
        console.print(rich_table(quality_table([r])))
    if chart:
        width = min(console.width, 100)
        chart = tokens_chart([r], width=width)
        if chart:
            console.print(chart)
        print_speculative(console, [r])
    console.print(Group())
