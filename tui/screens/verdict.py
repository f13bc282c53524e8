"""Verdict: which of the runs being compared to run, under constraints edited live (store/verdict.py decides).

The same verdict as `codebench-tui verdict`: with a point (`at`) the ranking, the exclusions and missing figures,
and a plot of the candidates against peak memory with the frontier; without one, the map of where each
configuration wins over the grid. `y` copies it as Markdown."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Input, Label, Select, Static

from store.safe import LINE, shown
from tui.widgets.footer import Footer
from tui.widgets.plot import Plot

FIELDS = (("max-mem", "max mem", "24GiB"), ("quality", "min quality", "agreement>=0.99,pass@1>=0.3"),
          ("slo", "SLO", "ttft=200ms"), ("at", "at", "batch=8,input=2048 (empty: the whole grid)"))  # fmt: skip


def parse_fields(objective: str, max_mem: str, quality: str, slo: str, at: str) -> tuple[Any, str]:
    """The screen's fields as the CLI's flags: Constraints, or the first problem in one line."""
    import argparse

    from engines.base import SpecError
    from engines.study.load import parse_slo
    from store.verdict import Constraints, VerdictError, parse_at, parse_quality
    from tui.commands.run import parse_size

    try:
        return Constraints(objective=objective, max_mem=parse_size(max_mem.strip()) if max_mem.strip() else None,
                           quality=parse_quality(quality) if quality.strip() else [],
                           slo=parse_slo(slo) if slo.strip() else None,
                           at=parse_at(at) if at.strip() else None), ""  # fmt: skip
    except (VerdictError, SpecError, argparse.ArgumentTypeError) as exc:
        return None, str(exc)


class VerdictScreen(Screen):
    DEFAULT_CSS = """
    VerdictScreen .v-fields { height: auto; }
    VerdictScreen .v-fields Label { padding: 1 1 0 1; }
    VerdictScreen .v-fields Input { width: 1fr; }
    VerdictScreen .v-fields Input.v-max-mem { width: 14; }
    VerdictScreen #v-objective { width: 26; }
    VerdictScreen #v-error { color: $error; height: auto; padding: 0 1; }
    VerdictScreen #v-body { height: auto; }
    VerdictScreen #v-plot { height: 16; }
    """
    BINDINGS = [
        Binding("y", "copy", "Copy MD", tooltip="Copy the verdict as Markdown to the clipboard"),
        Binding("escape", "back", "Back", tooltip="Back to Compare"),
    ]

    def __init__(self, results: list[Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.results = list(results)
        self.verdict: Any = None

    def compose(self):
        from store.verdict import OBJECTIVES

        rows = (FIELDS[:1] + FIELDS[3:], FIELDS[1:3])  # objective, max mem, at; then quality and SLO
        for n, row in enumerate(rows):
            with Horizontal(classes="v-fields"):
                if n == 0:
                    yield Select([(v[0], k) for k, v in OBJECTIVES.items()], value="tokens_per_s", allow_blank=False,
                                 id="v-objective")  # fmt: skip
                for key, label, placeholder in row:
                    yield Label(label)
                    yield Input(placeholder=placeholder, id=f"v-{key}", classes=f"v-{key}")
        yield Static(id="v-error")
        with VerticalScroll(id="v-scroll"):
            yield Static(id="v-body")
            yield Plot(id="v-plot", empty="give a point (at) to plot the candidates against peak memory")
        yield Footer()

    def on_mount(self) -> None:
        self.decide()

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self, _event: Any) -> None:
        self.decide()

    def fields(self) -> tuple[str, ...]:
        return (str(self.query_one("#v-objective", Select).value),
                *(self.query_one(f"#v-{key}", Input).value for key, _, _ in FIELDS))  # fmt: skip

    def decide(self) -> None:
        from store.verdict import decide, tables, text_lines
        from tui.commands.verdict import predictor
        from tui.render import rich_table
        from tui.widgets.charts import verdict_chart

        constraints, error = parse_fields(*self.fields())
        self.query_one("#v-error", Static).update(Text(shown(error, LINE)) if error else "")
        if constraints is None:
            return
        self.verdict = v = decide(self.results, constraints, predictor)
        lines = [Text(line, style="bold" if line.startswith(("winner", "tie", "no configuration")) else "")
                 for line in text_lines(v)]  # fmt: skip
        self.query_one("#v-body", Static).update(Group(*(rich_table(t) for t in tables(v)), *lines))
        plot = self.query_one("#v-plot", Plot)
        plot.display = v.point is not None
        plot.set_builder((lambda w, h: verdict_chart(v, w, h)) if v.point is not None else None)

    def action_copy(self) -> None:
        from store.verdict_export import to_markdown

        if self.verdict is None:
            self.notify("fix the constraint first", severity="warning")
            return
        text = to_markdown(self.verdict)
        self.app.copy_to_clipboard(text)
        self.notify(f"copied the verdict ({len(text.splitlines())} lines) to the clipboard")

    def action_back(self) -> None:
        self.dismiss()
