"""Live: progress with ETA, current cell, tokens/s, host and GPU telemetry, results as they land, the log.

Fed by a tui.feed.Feed (a running study, a stored run, a script). A timer polls the feed at 8 Hz
and posts the batch as one `Events` message; nothing else touches the widgets.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from store.safe import NAME, first_line, shown
from store.tables import STATUS_MARK
from tui.feed import Feed, FeedInfo
from tui.live_state import LiveState
from tui.planning import clock
from tui.status import STATUS_STYLE
from tui.widgets.bars import Gauge, bar, gib
from tui.widgets.footer import Footer
from tui.widgets.spark import Spark
from tui.widgets.tail import TailLog

DRAIN_HZ = 8.0
COLUMNS = [("#", 2, True), ("batch", 5, True), ("in", 5, True), ("out", 4, True), ("status", 9, False),
           ("tok/s", 9, True), ("lat s", 7, True), ("MB", 7, True), ("flags", 10, False)]  # (header, width, right-aligned)
LOG_STYLE = {"stderr": "grey62", "warn": "yellow", "error": "bold red", "info": ""}


def strip(values: Any, width: int = 20) -> str:
    """The latest values as bars from the lowest to the highest of them."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    bars = "▁▂▃▄▅▆▇█"
    return "".join(bars[int((v - lo) / (hi - lo) * 7) if hi > lo else 0] for v in vals)


def requests_line(counts: tuple, ttft_ms: Any, itl_ms: Any) -> Text:
    """A serving cell: requests in flight, done and failed, and a rolling strip of the latest TTFT and ITL."""
    in_flight, done, failed, total = counts
    out = Text(f"\n  requests {in_flight} in flight · {done}{f'/{total}' if total else ''} done")  # 0: a duration
    out.append(f" · {failed} failed", style="red" if failed else "")
    for name, values in (("TTFT", ttft_ms), ("ITL", itl_ms)):
        if values:
            last = list(values)[-1]
            out.append(f"   {name} ")
            out.append(strip(values), style="cyan")
            out.append(f" {last:,.1f} ms")
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


class LiveScreen(Screen):
    BINDINGS = [
        Binding("x", "cancel_study", "Cancel", tooltip="Cancel the running study (asks first)", id="live-cancel"),
        # Replay keys win over the results table's own (priority); on a live study they pass through.
        Binding("space", "pause", "Pause", tooltip="Pause or resume the replay", id="live-pause", priority=True),
        Binding("left", "seek(-1)", "-5%", tooltip="Seek back 5% of the run", id="live-back", priority=True),
        Binding("right", "seek(1)", "+5%", tooltip="Seek forward 5% of the run", id="live-fwd", priority=True),
        Binding("home", "seek_to(0)", "Start", show=False, tooltip="Seek to the start of the run", priority=True),
        Binding("end", "seek_to(1)", "End", show=False, tooltip="Seek to the end of the run", priority=True),
        Binding("plus,equals_sign", "speed(2)", "Faster", tooltip="Replay twice as fast", key_display="+",
                priority=True),  # fmt: skip
        Binding("minus", "speed(0.5)", "Slower", show=False, tooltip="Replay half as fast", priority=True),
        Binding("c", "compare", "Compare", tooltip="Compare the runs of the finished study", id="live-compare"),
        Binding("escape", "back", "Back", tooltip="Close the replay", id="live-close"),
    ]

    class Events(Message, bubble=False):
        """One timer tick's worth of events (5-10 per second at most)."""

        def __init__(self, events: list, reset: bool = False) -> None:
            super().__init__()
            self.events = events
            self.reset = reset

    class StudyFinished(Message):
        def __init__(self, status: str, run_ids: list[str]) -> None:
            super().__init__()
            self.status = status
            self.run_ids = run_ids

    def __init__(self, feed: Feed | None = None, *, replay_run: str | None = None, speed: float | None = None,
                 **kw: Any) -> None:  # fmt: skip
        super().__init__(**kw)
        self.feed: Feed | None = None
        self.state = LiveState({}, [])
        self._initial = feed
        self._replay_run = replay_run
        self._speed = speed
        self._shown_results = 0
        self._shown_log = 0
        self._last_paint = 0.0
        self.study_result: Any = None
        self._show_run = False
        self._last_text: dict[str, Text] = {}
        self._painted_series: tuple[int, int] = (-1, -1)
        self._runs_lines = -1
        self._current_lines = 0
        self.run_ids: list[str] = []
        self._widgets: dict[str, Any] = {}  # selector -> widget: a DOM query per widget per frame adds up
        self._gpu_widgets: dict[Any, tuple[Gauge, Static, Spark]] = {}  # by (node, index)

    def compose(self):
        yield Static(id="live-head")
        with Vertical(id="live-progress"):
            yield Static(id="live-overall")
            yield Static(id="live-runs")
            yield Static(id="live-current")
        with Horizontal(id="live-body"):
            with Vertical(id="live-table"):  # a log of fixed-width rows: appending renders one line, not the table
                yield Static(id="results-head")
                yield TailLog(id="live-results", max_lines=20000, cut_at_space=True)
            with VerticalScroll(id="live-side"):
                yield Static("tok/s", id="tok-label", classes="side-label")
                yield Spark([], id="spark-tok")
                yield Gauge("CPU", id="g-cpu")
                yield Spark([], id="spark-cpu", classes="spark-small")
                yield Gauge("RSS", id="g-rss")
                yield Spark([], id="spark-rss", classes="spark-small")
                yield Vertical(id="live-gpus")
        yield TailLog(id="live-log", max_lines=2000, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        self._columns(FeedInfo(""))
        self.set_interval(1 / DRAIN_HZ, self._drain)
        if self._initial is not None:
            self.start(self._initial)
        elif self._replay_run:
            self.play_run(self._replay_run, speed=self._speed)
        self._paint(force=True)

    def on_resize(self) -> None:
        self.set_class(self.size.width >= 120, "-wide")
        self.set_class(self.size.width < 100, "-narrow")
        self.set_class(self.size.height >= 36, "-tall")

    # --- feeding -------------------------------------------------------------------------

    @property
    def study_running(self) -> bool:
        return self.feed is not None and self.feed.kind == "study" and self.study_result is None and not self.state.ended

    def start(self, feed: Feed) -> None:
        """Show `feed` from its beginning; a study feed also gets its runner worker."""
        self.feed = feed
        self.study_result = None
        self.run_ids = []
        self._reset_widgets(feed.info)
        if feed.kind in ("study", "synthetic"):
            self.run_worker(feed.run, thread=True, name=f"{feed.kind}-runner", group="study", exit_on_error=False)
        self.refresh_bindings()
        self._paint(force=True)

    def play_run(self, ref: str, speed: float | None = None) -> None:
        """Load a stored run in a thread, then replay it."""
        self._speed = speed
        self.query_one("#live-head", Static).update(Text(f"loading run {shown(ref, NAME)}…"))
        self.run_worker(lambda: _load_run(self.app, ref), thread=True, name="load-replay", group="replay",
                        exit_on_error=False)  # fmt: skip

    def _columns(self, info: FeedInfo) -> None:
        self.query_one("#live-results", TailLog).clear()
        self._show_run = len(info.labels) > 1  # one run: its label is on the progress line already
        cols = (COLUMNS[:1] if self._show_run else []) + COLUMNS[1:]
        head = Text(" ".join(name.rjust(w) if right else name.ljust(w) for name, w, right in cols), style="bold")
        self.query_one("#results-head", Static).update(head)

    def _reset_widgets(self, info: FeedInfo) -> None:
        self.state = LiveState(info.cells, info.labels, info.host_mem, info.host_cpus, info.estimate_s)
        self._painted_series = (-1, -1)
        self._columns(info)
        self._shown_results = 0
        self.query_one("#live-log", TailLog).clear()
        self._shown_log = 0
        self.query_one("#live-gpus", Vertical).remove_children()
        self._gpu_widgets.clear()

    def _drain(self) -> None:
        feed = self.feed
        if feed is None:
            return
        reset = bool(getattr(feed, "reset", False))
        if reset:
            feed.reset = False  # type: ignore[attr-defined]
        events = feed.poll()
        if events or reset:
            self.post_message(self.Events(events, reset))
        elif time.monotonic() - self._last_paint > 1.0:
            self._paint()  # clocks move without events

    @on(Events)
    def _on_events(self, message: Events) -> None:
        if message.reset and self.feed is not None:
            self._reset_widgets(self.feed.info)
        for e in message.events:
            self.state.apply(e)
            if e.kind == "run_started" and e.run_id not in self.run_ids:
                self.run_ids.append(e.run_id)
        self._paint(force=True)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "replay" and event.state == WorkerState.SUCCESS:
            from tui.feed import ReplayFeed

            self.start(ReplayFeed(worker.result, speed=self._speed))
        elif worker.group == "replay" and event.state == WorkerState.ERROR:
            head = Text(f"cannot replay: {first_line(worker.error)}", style="bold red")
            self.query_one("#live-head", Static).update(head)
        elif worker.group == "study" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            self._drain()  # the runner's last events, as one more message, before the verdict
            self.call_later(self._study_done, worker)

    def _study_done(self, worker: Worker) -> None:
        if worker.state == WorkerState.ERROR:
            msg = str(worker.error).strip().splitlines()[0] if str(worker.error).strip() else repr(worker.error)
            self.state._say(time.time(), "error", f"study failed: {msg}")
            self.state.finish(time.time(), "failed")
            status = "failed"
        else:
            result = worker.result
            self.study_result = result
            status = getattr(result, "status", "done")
            self.run_ids = list(getattr(result, "run_ids", self.run_ids) or self.run_ids)
            self.state.finish(time.time(), "cancelled" if status == "cancelled" else "finished")
        self.refresh_bindings()
        self._paint(force=True)
        if self.feed is not None and self.feed.kind == "study":
            self.post_message(self.StudyFinished(status, list(self.run_ids)))

    # --- painting ------------------------------------------------------------------------

    def _paint(self, force: bool = False) -> None:
        self._last_paint = time.monotonic()
        now = self.feed.now() if self.feed is not None else time.time()
        s = self.state
        self._update("#live-head", self._head(now))
        self._update("#live-overall", self._overall(now))
        runs = self._runs_text(now)
        lines = runs.plain.count("\n")
        self._update("#live-runs", runs, layout=lines != self._runs_lines)
        self._runs_lines = lines
        current = self._current()
        lines = current.plain.count("\n")  # a serving cell adds its requests line
        self._update("#live-current", current, layout=lines != self._current_lines)
        self._current_lines = lines
        tok = list(s.tokens)
        if self._painted_series != (s.tokens_seen, s.samples_seen):  # sparklines only when a point came
            self._painted_series = (s.tokens_seen, s.samples_seen)
            self._paint_series()
        last = f"{tok[-1]:,.1f}" if tok else "-"
        peak = f"{max(tok):,.1f}" if tok else "-"
        self._update("#tok-label", Text.assemble(("tok/s ", "bold"), f"{last}  (max {peak})"))
        cpus = max(s.host_cpus, 1)
        self._get("#g-cpu").set(s.cpu_now, cpus * 100.0, f"{s.cpu_now:.0f}%/{cpus * 100}%")
        self._get("#g-rss").set(float(s.rss_now), float(s.host_mem or 1), f"{gib(s.rss_now)}/{gib(s.host_mem)}")
        self._paint_gpus()
        self._paint_results()
        self._paint_log()

    def _update(self, selector: str, text: Text, layout: bool = False) -> None:
        """Static.update only when the text changed, and without a relayout for fixed heights:
        a repaint of every widget at 8 Hz is what would stall the event loop."""
        if self._last_text.get(selector) == text:
            return
        self._last_text[selector] = text
        self._get(selector).update(text, layout=layout)

    def _get(self, selector: str) -> Any:
        widget = self._widgets.get(selector)
        if widget is None:
            widget = self._widgets[selector] = self.query_one(selector)
        return widget

    def _paint_series(self) -> None:
        s = self.state
        self._get("#spark-tok").data = s.tokens
        self._get("#spark-cpu").data = s.cpu
        self._get("#spark-rss").data = s.rss
        for idx, g in s.gpus.items():
            if idx in self._gpu_widgets:
                self._gpu_widgets[idx][2].data = g.mem

    def _head(self, now: float) -> Text:
        feed = self.feed
        if feed is None:
            return Text.assemble(("Live", "bold"), "  no study yet: set one up (F2) or replay a run from History (F4)")
        s = self.state
        status = s.status
        style = "bold " + STATUS_STYLE.get("done" if status == "finished" else status, "")
        out = Text.assemble((shown(feed.info.title, 2 * NAME), "bold"), "  ", (shown(feed.info.model, NAME), "italic"),
                            "  ",
                            (status, style), f"  elapsed {clock(s.elapsed(now))}")  # fmt: skip
        if not feed.live:
            pos = feed.now() - getattr(feed, "start", 0.0)
            dur = getattr(feed, "duration", 0.0)
            mark = "paused" if getattr(feed, "paused", False) else "playing"
            out.append(f"  {mark} ×{getattr(feed, 'speed', 1):g}  {clock(pos)}/{clock(dur)}", style="magenta")
        return out

    def _overall(self, now: float) -> Text:
        s = self.state
        done, total = s.finished_cells, s.total_cells
        eta = s.eta(now)
        tail = f" {done}/{total} cells  ETA " + (clock(eta) if eta is not None else "--:--")
        if self.feed is not None and self.feed.kind == "study" and not s.finished_cells and s.estimate_s is not None:
            tail += " (estimate)"
        best = s.best_tokens()
        if best:
            tail += f"  best {best:,.1f} tok/s"
        out = Text("overall ", style="bold")
        out.append_text(bar(done / total if total else 0.0, max(self.size.width - 2 - 8 - len(tail), 8), "green"))
        out.append(tail)
        return out

    def _runs_text(self, now: float) -> Text:
        s = self.state
        rows = list(s.runs.values())
        out = Text()
        numbered = self._show_run
        label_w = min(max((len(r.label) for r in rows), default=10), 28) + (2 if numbered else 0)
        for r in rows:
            eta = s.run_eta(r, now)
            counts = " ".join(f"{n} {STATUS_MARK.get(k, k)}" for k, n in sorted(r.counts.items()) if k != "done")
            tail = Text(f" {r.finished:>3}/{r.total:<3} ")
            tail.append(r.status, style=STATUS_STYLE.get(r.status, ""))
            if eta is not None:
                tail.append(f" ETA {clock(eta)}")
            if counts:
                tail.append(f" {counts}", style="red")
            width = max(self.size.width - 2 - label_w - 1 - len(tail), 6)
            name = f"{r.number} {r.label}" if numbered else r.label
            out.append(name[:label_w].ljust(label_w) + " ")
            out.append_text(bar(r.finished / r.total if r.total else 0.0, width, "cyan"))
            out.append_text(tail)
            out.append("\n")
        pending = s.pending_labels if self.feed is not None and self.feed.kind == "study" else []
        for n, label in enumerate(pending, start=len(rows) + 1):
            name = f"{n} {label}" if numbered else label
            out.append(name[:label_w].ljust(label_w) + " waiting\n", style="dim")
        out.rstrip()
        return out

    def _current(self) -> Text:
        c = self.state.current
        if not c:
            return Text("no cell running", style="dim") if self.feed is not None else Text("")
        out = Text("▶ ", style="bold cyan")
        out.append(f"{c.get('run', '')}  ", style="bold")
        out.append(c.get("label", ""))
        if c.get("total"):
            out.append(f"  {c.get('phase')} {c.get('done')}/{c.get('total')}")
        if c.get("tps"):
            out.append(f"  {c['tps']:,.1f} tok/s", style="green")
        if c.get("requests"):
            out.append_text(requests_line(c["requests"], self.state.ttft_ms, self.state.itl_ms))
        return out

    def _paint_gpus(self) -> None:
        for idx, g in sorted(self.state.gpus.items()):
            mem = (float(g.mem_used or 0), float(g.mem_total or 1), f"{gib(g.mem_used)}/{gib(g.mem_total)}")
            info = Text(f"util {_fmt(g.util, 0)}%  power {_fmt(g.power_w, 0)} W")
            widgets = self._gpu_widgets.get(idx)
            if widgets is None:  # first sample of this GPU: its widgets, filled before they mount
                # No ids: after a seek back the old ones may still be on their way out.
                widgets = self._gpu_widgets[idx] = (Gauge(g.label), Static(info, classes="gpu-info"),
                                                    Spark(g.mem, classes="spark-small"))  # fmt: skip
                widgets[0].set(*mem)
                self._last_text[f"gpu-{idx}"] = info
                self._get("#live-gpus").mount(*widgets)
                continue
            gauge, label, _ = widgets
            gauge.set(*mem)
            if self._last_text.get(f"gpu-{idx}") != info:
                self._last_text[f"gpu-{idx}"] = info
                label.update(info, layout=False)

    def _paint_results(self) -> None:
        results = self.state.results
        if self._shown_results >= len(results):
            return
        log = self._get("#live-results")
        for r in results[self._shown_results :]:
            cells = [str(r.run_number)] if self._show_run else []
            cells += [str(r.batch), str(r.input_len), str(r.output_len), STATUS_MARK.get(r.status, r.status),
                      _fmt(r.tokens_per_s), _fmt(r.latency_s, 3), "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:,.0f}",
                      ("⚑ " + ",".join(r.flags)) if r.flags else ""]  # fmt: skip
            cols = (COLUMNS[:1] if self._show_run else []) + COLUMNS[1:]
            line = Text()
            for i, (value, (name, width, right)) in enumerate(zip(cells, cols)):
                style = STATUS_STYLE.get(r.status, "") if name == "status" else ("yellow" if name == "flags" else "")
                line.append((value.rjust(width) if right else value.ljust(width)) + " ", style=style)
            if r.serving:
                line.append(r.serving, style="cyan")
            log.write(line)
        self._shown_results = len(results)

    def _paint_log(self) -> None:
        s = self.state
        new = s.log_total - self._shown_log
        if new <= 0:
            return
        log = self._get("#live-log")
        for t, level, text in list(s.log)[-min(new, len(s.log)) :]:
            stamp = time.strftime("%H:%M:%S", time.localtime(t))
            log.write(Text.assemble((stamp + " ", "dim"), (text, LOG_STYLE.get(level, ""))))
        self._shown_log = s.log_total

    # --- actions -------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        replay = self.feed is not None and not self.feed.live
        if action == "cancel_study":
            return self.study_running
        if action in ("pause", "seek", "seek_to", "speed"):
            return replay
        if action == "compare":  # the runs of a finished study, as stored
            return self.feed is not None and self.feed.kind == "study" and len(self.run_ids) > 1 and not self.study_running
        if action == "back":
            return len(self.app.screen_stack) > 1 and self.app.screen is self
        return True

    def action_cancel_study(self) -> None:
        from tui.screens.modals import ConfirmScreen

        def done(yes: bool | None) -> None:
            if yes and self.feed is not None and getattr(self.feed, "cancel", None) is not None:
                self.feed.cancel.set()
                self.state._say(time.time(), "warn", "cancelling: the worker is stopped, finished cells are kept")
                self._paint(force=True)

        self.app.push_screen(ConfirmScreen("Cancel the running study? Finished cells are kept.", yes="Cancel study",
                                           no="Keep running"), done)  # fmt: skip

    def action_pause(self) -> None:
        if self.feed is not None and hasattr(self.feed, "toggle_pause"):
            self.feed.toggle_pause()
            self._paint(force=True)

    def action_seek(self, direction: int) -> None:
        feed = self.feed
        if feed is not None and hasattr(feed, "seek"):
            step = max(feed.duration * 0.05, 1.0)
            feed.seek(feed.position + direction * step)
            self._drain()

    def action_seek_to(self, fraction: float) -> None:
        feed = self.feed
        if feed is not None and hasattr(feed, "seek"):
            feed.seek(feed.start + feed.duration * float(fraction))
            self._drain()

    def action_speed(self, factor: float) -> None:
        feed = self.feed
        if feed is not None and hasattr(feed, "speed"):
            feed.speed = min(max(feed.speed * float(factor), 0.25), 4096.0)
            self._paint(force=True)

    def action_compare(self) -> None:
        from tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(list(self.run_ids)))

    def action_back(self) -> None:
        self.dismiss()


def _load_run(app: Any, ref: str) -> Any:
    """Thread body: the stored run with its telemetry."""
    from store.queries import resolve_run
    from store.results import load_result

    with app.database().session() as s:
        return load_result(resolve_run(ref, session=s), session=s, telemetry=True)
