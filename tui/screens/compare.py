"""Compare: rows are grid cells, columns are runs, ratios against a chosen baseline; plots; export; copy.

Tables come from store.tables.comparison_table and exports from store.export.render: the same
schema and the same text as `codebench-tui compare` / `export`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from store.safe import LINE, NAME, shown
from store.vocabulary import FORMATS, METRICS
from tui.status import TABLE_STYLE
from tui.widgets.boundary_map import BoundaryMap
from tui.widgets.footer import Footer
from tui.widgets.needle_map import NeedleMap
from tui.widgets.plot import Plot

TABS = ("tab-table", "tab-tps", "tab-heat", "tab-mem", "tab-fit", "tab-pareto")


def note_style(line: str) -> str:
    """The verdicts read first; what may not be trusted stands out; the rest is context."""
    if " vs baseline: " in line:
        return ""
    if line.startswith(("⚑", "environment differs", "note (")):
        return "yellow"
    return "dim"


class CompareScreen(Screen):
    BINDINGS = [
        Binding("m", "metric(1)", "Metric", tooltip="Next metric: tok/s, latency, TTFT, decode tok/s, peak memory"),
        Binding("b", "baseline(1)", "Baseline", tooltip="Next run as the baseline of the ratios"),
        Binding("t", "next_tab", "View", tooltip="Next view: table, tok/s plot, speed-up map, memory plot, memory fit"),
        Binding("1", "tab(0)", "Table", show=False, tooltip="The comparison table"),
        Binding("2", "tab(1)", "tok/s plot", show=False, tooltip="tokens/s against batch size, a line per run"),
        Binding("3", "tab(2)", "Speed-up map", show=False, tooltip="Speed-up over batch x input length"),
        Binding("4", "tab(3)", "Memory plot", show=False, tooltip="Peak memory against batch size"),
        Binding("5", "tab(4)", "Memory fit", show=False,
                tooltip="Measured OK / OOM over batch x input, the predicted memory boundary and a projection"),
        Binding("6", "tab(5)", "Pareto", show=False,
                tooltip="Throughput per device against tokens/s per user, every cell, and the frontier"),
        Binding("g", "goodput", "Goodput", show=False, tooltip="Pareto view: all tokens, or only goodput"),
        Binding("p", "projection", "Card size", show=False,
                tooltip="Memory fit: project onto the next card size (24, 40, 48, 80, 141 GiB, off)"),
        Binding("v", "verdict", "Verdict", tooltip="Which of these runs to pick, under constraints you set"),
        Binding("e", "export", "Export", tooltip="Write CSV, Markdown, JSON or HTML"),
        Binding("y", "copy", "Copy MD", tooltip="Copy the comparison as a Markdown table to the clipboard"),
        Binding("escape", "back", "Back", tooltip="Back to where you came from"),
    ]

    class Loaded(Message):
        def __init__(self, results: list | None, error: str = "", floors: tuple[dict, str] = ({}, "")) -> None:
            super().__init__()
            self.results, self.error, self.floors = results, error, floors

    class Exported(Message):
        def __init__(self, text: str, ok: bool) -> None:
            super().__init__()
            self.text, self.ok = text, ok

    def __init__(self, run_ids: list[str], open_export: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.run_ids = list(run_ids)
        self.open_export = open_export  # the palette's Export…: the dialog opens once the runs are loaded
        self.results: list = []
        self.floors: dict[str, float] = {}  # the hosts' noise floors per metric (store.noise)
        self.floor_note = ""
        self.metric = "tokens_per_s"
        self.baseline = 0
        self.goodput = False  # the Pareto view: every output token, or only those of requests meeting the SLO
        self.last_export: Path | None = None

    def compose(self):
        yield Static("loading runs…", id="cmp-head")
        with TabbedContent(id="cmp-tabs"):
            with TabPane("1 Table", id="tab-table"):
                yield DataTable(id="cmp-table", zebra_stripes=True, cursor_type="row", header_height=2)
                with VerticalScroll(id="cmp-notes-scroll"):
                    yield Static(id="cmp-notes")
            with TabPane("2 tok/s", id="tab-tps"):
                yield Plot(id="plot-tps")
            with TabPane("3 Speed-up", id="tab-heat"):
                with VerticalScroll(id="heat-scroll"):
                    yield Static(id="heat")
                    yield NeedleMap(id="needle-map")  # needle runs: retrieval over context x depth
            with TabPane("4 Memory", id="tab-mem"):
                yield Plot(id="plot-mem")
            with TabPane("5 Memory fit", id="tab-fit"):
                with VerticalScroll(id="fit-scroll"):
                    yield BoundaryMap(id="fit-map")
            with TabPane("6 Pareto", id="tab-pareto"):
                yield Plot(id="plot-pareto", empty="no cell has a tokens/s per user (serving or decode figures)")
                with VerticalScroll(id="pareto-scroll"):
                    yield Static(id="pareto-list")
        yield Footer()

    def on_mount(self) -> None:
        app, ids = self.app, self.run_ids

        def work() -> None:  # thread
            from store.noise import floors_for
            from store.queries import RunNotFound, resolve_run
            from store.results import load_result

            try:
                with app.database().session() as s:
                    results = [load_result(resolve_run(i, session=s), session=s, telemetry=False) for i in ids]
                    floors = floors_for(results, session=s) if len(results) > 1 else ({}, "")
            except RunNotFound as exc:
                self.post_message(self.Loaded(None, str(exc)))
                return
            self.post_message(self.Loaded(results, floors=floors))

        self.run_worker(work, thread=True, group="compare-load", exit_on_error=False)

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        if message.results is None:
            self.query_one("#cmp-head", Static).update(Text(shown(message.error, LINE), style="bold red"))
            return
        self.results = message.results
        self.floors, self.floor_note = message.floors
        self._render_all()
        self.query_one(BoundaryMap).load(self.results)  # predictions do not change with metric or baseline
        self.query_one(NeedleMap).load(self.results)  # nor does retrieval accuracy
        self.refresh_bindings()  # metric, baseline, export and copy are live now
        if self.open_export:
            self.open_export = False
            self.action_export()

    # --- rendering ---------------------------------------------------------------------------

    def _render_all(self) -> None:
        from tui.widgets.charts import memory_chart, tokens_chart

        self._render_head(METRICS)
        self._render_table()
        results = self.results
        self.query_one("#plot-tps", Plot).set_builder(lambda w, h: tokens_chart(results, w, h))
        self.query_one("#plot-mem", Plot).set_builder(lambda w, h: memory_chart(results, w, h))
        self._render_heat()
        self._render_pareto()

    def _render_pareto(self) -> None:
        from store.pareto import pareto_table
        from tui.widgets.charts import pareto_chart

        results, goodput = self.results, self.goodput
        self.query_one("#plot-pareto", Plot).set_builder(lambda w, h: pareto_chart(results, w, h, goodput))
        t = pareto_table(results, goodput)
        text = Text()
        if t is not None:
            text.append(t.title + "\n", style="bold")
            widths = [max(len(x) for x in col) for col in zip(t.headers, *t.rows)]
            for i, row in enumerate([t.headers, *t.rows]):
                cells = [v.ljust(w) if j < 2 else v.rjust(w) for j, (v, w) in enumerate(zip(row, widths))]
                text.append("  ".join(cells) + "\n", style="underline" if i == 0 else "")
            for note in t.notes:
                text.append(note + "\n", style="dim")
        text.append("g: " + ("every output token" if goodput else "goodput only (needs --slo)"), style="dim")
        self.query_one("#pareto-list", Static).update(text)

    def action_goodput(self) -> None:
        self.goodput = not self.goodput
        self._render_pareto()
        self.action_tab(TABS.index("tab-pareto"))

    def metrics(self) -> list[str]:
        """The metrics `m` cycles through: serving ones only where a run has serving cells."""
        from store.serving import SERVING_METRICS

        serving = any(isinstance((c.get("metrics") or {}).get("serving"), dict) for r in self.results for c in r.cells)
        return [m for m in METRICS if serving or m not in SERVING_METRICS]

    def _render_head(self, metrics: dict) -> None:
        head = Text()
        head.append("metric ", style="bold")
        for key in self.metrics():
            label = metrics[key][0]
            head.append(f" {label} ", style="reverse bold" if key == self.metric else "dim")
        head.append("   base ", style="bold")
        base = self.results[self.baseline]
        head.append(f"{shown(base.short_id)} {shown(base.run.get('name') or base.run['label'], NAME)}", style="cyan")
        self.query_one("#cmp-head", Static).update(head)

    def table(self) -> Any:
        from store.tables import comparison_table

        return comparison_table(self.results, self.baseline, self.metric, self.floors, self.floor_note)

    def _render_table(self) -> None:
        t = self.table()
        dt = self.query_one("#cmp-table", DataTable)
        dt.clear(columns=True)
        for i, h in enumerate(t.headers):  # "label [id] tok/s" on two lines: columns half as wide
            dt.add_column(Text(h.replace(" [", "\n["), justify="right"), key=f"c{i}")
        for row, styles in zip(t.rows, t.styles or [[""] * len(t.headers)] * len(t.rows)):
            dt.add_row(*(Text(v, style=TABLE_STYLE.get(s, ""), justify="right") for v, s in zip(row, styles)))
        notes = Text()
        for i, line in enumerate(t.notes):
            notes.append(("\n" if i else "") + line, style=note_style(line))
        self.query_one("#cmp-notes", Static).update(notes)

    def _render_heat(self) -> None:
        from tui.widgets.charts import speedup_grids

        metric = self.metric if self.metric != "peak_mem" else "tokens_per_s"
        self.query_one("#heat", Static).update(speedup_grids(self.results, self.baseline, metric, self.floors))

    # --- actions -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("metric", "baseline", "export", "copy", "projection", "goodput", "verdict") and not self.results:
            return None  # shown, greyed, until the runs are loaded
        if action == "back":
            return len(self.app.screen_stack) > 1
        return True

    def action_metric(self, step: int) -> None:
        keys = self.metrics()
        self.set_metric(keys[(keys.index(self.metric) + int(step)) % len(keys)] if self.metric in keys else keys[0])

    def set_metric(self, metric: str) -> None:
        self.metric = metric
        self._render_all()

    def action_baseline(self, step: int) -> None:
        self.set_baseline((self.baseline + int(step)) % max(len(self.results), 1))

    def set_baseline(self, index: int) -> None:
        self.baseline = index
        self._render_all()

    def action_projection(self) -> None:
        self.query_one(BoundaryMap).next_size()
        self.action_tab(TABS.index("tab-fit"))

    def action_next_tab(self) -> None:
        tabs = self.query_one("#cmp-tabs", TabbedContent)
        tabs.active = TABS[(TABS.index(tabs.active) + 1) % len(TABS)] if tabs.active in TABS else TABS[0]

    def action_tab(self, index: int) -> None:
        self.query_one("#cmp-tabs", TabbedContent).active = TABS[int(index)]

    def markdown(self) -> str:
        from store.export import markdown_table

        return markdown_table(self.table())

    def action_copy(self) -> None:
        text = self.markdown()
        self.app.copy_to_clipboard(text)
        self.notify(f"copied the Markdown table ({len(text.splitlines())} lines) to the clipboard")

    def action_verdict(self) -> None:
        from tui.screens.verdict import VerdictScreen

        self.app.push_screen(VerdictScreen(self.results))

    def action_export(self) -> None:
        from tui.screens.modals import ExportScreen

        self.app.push_screen(ExportScreen(self.stem()), self._export_to)

    def stem(self) -> str:
        """A file name from the runs' ids: imported ids may hold anything, a file name only this."""
        return "codebench-" + "-".join(re.sub(r"[^0-9A-Za-z_.]", "_", r.short_id) for r in self.results[:4])

    def _export_to(self, choice: tuple[str, str] | None) -> None:
        if not choice:
            return
        fmt, path = choice
        self.export(fmt, Path(path).expanduser())

    def export(self, fmt: str, path: Path) -> None:
        """Write in a thread: JSON carries telemetry and groups, like `codebench-tui export`."""
        app, ids, baseline = self.app, [r.id for r in self.results], self.baseline

        def work() -> None:
            from store.export import export_text
            from store.results import load_results
            from tui.errors import UsageError
            from tui.outputs import check_output, write_atomic

            try:
                db = app.database()
                check_output(path, db.path, "export to")  # before the work, and again when writing
                results = load_results(db, ids, telemetry=fmt == "json")
                write_atomic(path, export_text(db, results, fmt, baseline), db.path, "export to")
            except UsageError as exc:
                self.post_message(self.Exported(str(exc), False))
                return
            except OSError as exc:  # reading the store
                self.post_message(self.Exported(f"cannot export ({exc.strerror or exc}); choose another path", False))
                return
            self.last_export = path
            self.post_message(self.Exported(f"wrote {len(ids)} runs to {path}", True))

        self.run_worker(work, thread=True, group="compare-export", exit_on_error=False)

    @on(Exported)
    def _exported(self, message: Exported) -> None:
        self.notify(message.text, severity="information" if message.ok else "error")

    def action_back(self) -> None:
        self.dismiss()

    def palette_commands(self):
        yield ("Compare: verdict", "Which of these runs to pick, under constraints you set", self.action_verdict)

        for key in METRICS:
            yield (f"Compare: metric {METRICS[key][0]}", f"Show {METRICS[key][0]} in the table",
                   lambda k=key: self.set_metric(k))  # fmt: skip
        for i, r in enumerate(self.results):
            yield (f"Compare: baseline {shown(r.short_id)} {shown(r.run['label'], NAME)}", "Ratios against this run",
                   lambda i=i: self.set_baseline(i))  # fmt: skip
        for fmt in FORMATS:
            stem = self.stem()
            yield (f"Compare: export {fmt.upper()}", f"Write {stem}.{fmt} in the current directory",
                   lambda f=fmt, s=stem: self.export(f, Path(f"{s}.{f}")))  # fmt: skip
