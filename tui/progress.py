"""Live progress for headless runs: a bar per run, the current cell and its tokens/s."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from engines import events as ev

MARK = {"done": "[green]done[/]", "oom": "[bold red]OOM[/]", "skipped": "[dim]skipped[/]",
        "crashed": "[bold magenta]crashed[/]", "failed": "[red]failed[/]", "cancelled": "[yellow]cancelled[/]"}  # fmt: skip


class HeadlessProgress:
    def __init__(self, console: Console, spec, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.cells = spec.cells()
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console, transient=False,
            disable=not enabled,
        )  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "HeadlessProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _say(self, text: str) -> None:
        self.progress.console.print(text) if self.enabled else None

    def on_event(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self.tasks[e.run_id] = self.progress.add_task(e.label, total=e.cells_total, status="starting worker")
        task = self.tasks.get(e.run_id)
        if task is None:
            return
        if isinstance(e, ev.Loaded):
            self.progress.update(task, status=f"loaded in {e.load_s:.1f}s on {e.device}")
        elif isinstance(e, ev.CellStarted):
            self.progress.update(task, status=e.label)
        elif isinstance(e, ev.Progress) and e.index < 0:
            self.progress.update(task, status=f"{e.phase} {e.done}/{e.total}")
        elif isinstance(e, ev.QualityResult):
            value = "n/a" if e.value is None else f"{e.value:.4g}"
            self._say(f"  {e.metric} = {value}" + (f" ({e.details['error']})" if e.details.get("error") else ""))
        elif isinstance(e, ev.Progress):
            cell = self.cells[e.index]
            self.progress.update(task, status=f"{cell.label()}  {e.phase} {e.done}/{e.total}  {e.tokens_per_s:,.0f} tok/s")
        elif isinstance(e, ev.CellFinished):
            self.progress.advance(task)
            if e.status != "done":
                why = f": {e.error.splitlines()[0]}" if e.error else ""
                self._say(f"  {self.cells[e.index].label()} {MARK.get(e.status, e.status)}{why}")
        elif isinstance(e, ev.WorkerStarted) and e.attempt > 1:
            self._say(f"  fresh worker (pid {e.pid}) resumes the remaining cells")
        elif isinstance(e, ev.RunFinished):
            self.progress.update(task, status=MARK.get(e.status, e.status))
            if e.error:
                self._say(f"  [red]{e.error.splitlines()[0]}[/]")
