"""Live progress for headless runs: a bar per run, the current cell and its tokens/s."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,  # fmt: skip
)
from rich.text import Text

from engines.study import events as ev
from store.safe import LINE, NAME, first_line, shown
from store.tables import STATUS_MARK
from tui.status import STATUS_STYLE

MARK = {s: (word, STATUS_STYLE[s]) for s, word in {"done": "done", **STATUS_MARK}.items()}


def mark(status: str) -> Text:
    word, style = MARK.get(status, (shown(status, NAME), ""))
    return Text(word, style=style)


class StatusColumn(ProgressColumn):
    """The task's `status` field, a Text: labels, devices and errors in it are data, never markup."""

    def render(self, task) -> Text:
        status = task.fields.get("status", "")
        return status if isinstance(status, Text) else Text(str(status))


class HeadlessProgress:
    def __init__(self, console: Console, spec, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.cells = spec.cells()
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), StatusColumn(), console=console, transient=False,
            disable=not enabled,
        )  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "HeadlessProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _say(self, text: Text | str) -> None:
        self.progress.console.print(Text(text) if isinstance(text, str) else text) if self.enabled else None

    def _status(self, task: int, text: str) -> None:
        self.progress.update(task, status=Text(shown(text, LINE)))

    def on_event(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self.tasks[e.run_id] = self.progress.add_task(shown(e.label, NAME), total=e.cells_total,
                                                          status=Text("starting worker"))  # fmt: skip
        task = self.tasks.get(e.run_id)
        if task is None:
            return
        if isinstance(e, ev.Loaded):
            self._status(task, f"loaded in {e.load_s:.1f}s on {e.device}")
        elif isinstance(e, ev.CellStarted):
            self._status(task, e.label)
        elif isinstance(e, ev.Progress) and e.index < 0:
            self._status(task, f"{e.phase} {e.done}/{e.total}")
        elif isinstance(e, ev.QualityResult):
            value = "n/a" if e.value is None else f"{e.value:.4g}"
            error = f" ({first_line(e.details['error'])})" if e.details.get("error") else ""
            self._say(f"  {shown(e.metric, NAME)} = {value}{error}")
        elif isinstance(e, ev.Progress):
            cell = self.cells[e.index]
            self._status(task, f"{cell.label()}  {e.phase} {e.done}/{e.total}  {e.tokens_per_s:,.0f} tok/s")
        elif isinstance(e, ev.CellFinished):
            self.progress.advance(task)
            if e.status != "done":
                why = f": {first_line(e.error)}" if e.error else ""
                self._say(Text.assemble(f"  {self.cells[e.index].label()} ", mark(e.status), why))
        elif isinstance(e, ev.WorkerStarted) and e.attempt > 1:
            self._say(f"  fresh worker (pid {e.pid}) resumes the remaining cells")
        elif isinstance(e, ev.RunFinished):
            self.progress.update(task, status=mark(e.status))
            if e.error:
                self._say(Text(f"  {first_line(e.error)}", style="red"))
