"""The Textual dashboard: Setup, Live, History, Compare and Replay.

`make_app` builds the app for the CLI (`run_app`) and for the tests. Everything heavy (sqlmodel,
the runner, plotext) is imported after the first frame or on first use; torch never is.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from store.safe import LINE, NAME, shown
from tui.screens.setup import SetupScreen

if TYPE_CHECKING:
    from tui.screens.live import LiveScreen

PRELOAD = ("tui.screens.live", "tui.screens.history", "tui.screens.compare", "store.db", "store.queries", "store.history", "store.results", "store.tables", "engines.registry",
           "engines.models.refs", "engines.harness.runner", "engines.measure.hardware", "tui.planning")  # fmt: skip


class CodebenchApp(App[int]):
    TITLE = "codebench-tui"
    CSS_PATH = ["app.tcss", "setup.tcss", "live.tcss", "history.tcss", "compare.tcss"]
    # History and Live import on first use: the first frame needs only Setup. "live" is one instance per app.
    DEFAULT_MODE = "setup"
    MODES = {"setup": SetupScreen, "history": lambda: _screen("history", "HistoryScreen")()}
    BINDINGS = [
        Binding("f2", "switch_mode('setup')", "Setup", tooltip="Set up and start a study", id="mode-setup"),
        Binding("f3", "switch_mode('live')", "Live", tooltip="The running (or last) study", id="mode-live"),
        Binding("f4", "switch_mode('history')", "History", tooltip="Every stored run", id="mode-history"),
        Binding("ctrl+q", "quit", "Quit", tooltip="Quit (a running study is cancelled)", id="quit", priority=True),
    ]

    def __init__(self, db_path: str | None = None, replay: str | None = None, *, check: Callable | None = None,
                 device: str | None = None, preload: bool = True, replay_speed: float | None = None,
                 feed: Any = None):  # fmt: skip
        super().__init__()
        self.initial_feed = feed  # a tui.feed.Feed to show on the live screen at start (tests, benchmark)
        self.db_path = db_path
        self.replay = replay
        self.engine_check = check  # engine availability; None: engines.registry.check
        self.device_override = device  # None: engines.measure.hardware.resolve_device("auto")
        self.preload = preload
        self.replay_speed = replay_speed
        self._db: Any = None
        self._db_lock = threading.Lock()
        self._live: LiveScreen | None = None
        self.add_mode("live", lambda: self.live)

    @property
    def live(self) -> LiveScreen:
        """The live screen of the "live" mode: studies run there (replays from History get their own)."""
        if self._live is None:
            self._live = _screen("live", "LiveScreen")(id="live-main")
        return self._live

    # --- shared services (any thread) ----------------------------------------------------

    def database(self) -> Any:
        """The store, opened on first use (sqlmodel is a 1 s import: never before the first frame)."""
        with self._db_lock:
            if self._db is None:
                from store.db import open_db

                self._db = open_db(self.db_path, create=True)
            return self._db

    def resolved_db_path(self) -> str | None:
        return str(self._db.path) if self._db is not None else self.db_path

    # --- lifecycle -----------------------------------------------------------------------

    async def on_mount(self) -> None:
        if self.initial_feed is not None:
            await self.switch_mode("live")
            self.live.start(self.initial_feed)
        elif self.replay:
            await self.switch_mode("live")
            self.live.play_run(self.replay, speed=self.replay_speed)
        if self.preload:  # after the first frame: a thread importing holds the GIL
            self.call_after_refresh(lambda: self.set_timer(0.3, self._start_preload))
        else:
            self.call_after_refresh(_freeze_heap)

    def on_worker_state_changed(self, event: Any) -> None:
        if event.worker.group == "preload" and event.worker.is_finished:
            _freeze_heap()

    def _start_preload(self) -> None:
        self.run_worker(_preload, thread=True, group="preload", exit_on_error=False)

    def on_unmount(self) -> None:
        feed = self._live.feed if self._live is not None else None
        if feed is not None and getattr(feed, "cancel", None) is not None:
            feed.cancel.set()  # the runner kills its worker and marks the run cancelled

    @property
    def study_running(self) -> bool:
        return self._live is not None and self._live.study_running

    async def start_study(self, spec: Any, estimate_s: float | None = None, executor: Any = None) -> bool:
        """Hand a validated spec to the live screen, which runs it with engines.harness.runner.Runner."""
        if self.study_running:
            self.notify("a study is already running: cancel it on the Live screen (x) first", severity="warning")
            return False
        from tui.feed import StudyFeed

        self.database()  # create the file here so a bad --db fails before any worker starts
        feed = StudyFeed(spec, self.resolved_db_path(), estimate_s, executor)
        await self.switch_mode("live")
        self.live.start(feed)
        return True

    # --- palette actions that reach across screens -------------------------------------------

    def _newest(self, n: int, then: Any) -> None:
        """The ids of the n newest runs, read in a thread, handed to `then` on the UI thread."""

        def work() -> None:
            from store.queries import list_runs

            with self.database().session() as s:
                ids = [r.id for r in list_runs(session=s, limit=n)]
            self.call_from_thread(then, list(reversed(ids)))

        self.run_worker(work, thread=True, group="palette", exit_on_error=False)

    def compare_last(self) -> None:
        def show(ids: list[str]) -> None:
            if len(ids) < 2:
                self.notify("compare needs two stored runs; run a study first", severity="warning")
                return
            self.push_screen(_screen("compare", "CompareScreen")(ids))

        self._newest(2, show)

    def compare_selected(self) -> None:
        ids = _history_selection(self)
        if len(ids) < 2:
            self.notify("select two or more runs in History (f4, then space on each) first", severity="warning")
            return
        self.push_screen(_screen("compare", "CompareScreen")(ids))

    def export_runs(self) -> None:
        if hasattr(self.screen, "action_export") and getattr(self.screen, "results", None):
            self.screen.action_export()  # the Compare screen's own dialog
            return
        ids = _history_selection(self)
        opening = lambda ids: self.push_screen(_screen("compare", "CompareScreen")(ids, open_export=True))  # noqa: E731
        if ids:
            opening(ids)
        else:
            self._newest(1, lambda ids: opening(ids) if ids else self.notify("no runs stored yet", severity="warning"))

    def replay_prompt(self) -> None:
        from tui.screens.modals import PromptScreen

        def play(ref: str | None) -> None:
            if ref and ref.strip():
                self.push_screen(_screen("live", "LiveScreen")(replay_run=ref.strip(), speed=self.replay_speed))

        self.push_screen(PromptScreen("Replay which run? (an id, an id prefix, last or last~N)", "last"), play)

    def notify(self, message: str, *, title: str = "", severity: Any = "information", timeout: float | None = None,
               markup: bool = True) -> None:  # fmt: skip
        """Every notification, never as markup: they carry names, paths and errors (Screen.notify comes here)."""
        super().notify(shown(message, 2 * LINE, lines=True), title=shown(title, NAME), severity=severity,
                       timeout=timeout, markup=False)  # fmt: skip

    def on_live_screen_study_finished(self, message: Any) -> None:
        severity = "information" if message.status == "done" else "warning"
        self.notify(f"study {message.status}: {len(message.run_ids)} run(s) stored", severity=severity)

    # --- command palette: every binding of the screen and the app, shown or not -----------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        seen: set[str] = set()
        for node in (screen, self):
            for key, bindings in node._bindings.key_to_bindings.items():
                for b in bindings:
                    name = b.action.split("(", 1)[0]
                    if not b.description or b.action in seen or node.check_action(name, ()) is not True:
                        continue
                    seen.add(b.action)
                    help_text = f"{b.tooltip or b.description}  [{b.key_display or key}]"
                    yield SystemCommand(palette_text(b.description), palette_text(help_text),
                                        partial(node.run_action, b.action))  # fmt: skip
        extra = getattr(screen, "palette_commands", None)
        if extra:  # titles may name runs and models
            for title, help_text, callback in extra():
                yield SystemCommand(palette_text(title), palette_text(help_text), callback)
        yield SystemCommand("Compare last two runs", "The two newest stored runs side by side (the older is the baseline)",
                            self.compare_last)  # fmt: skip
        yield SystemCommand("Compare selected", "The runs selected in History (space) side by side", self.compare_selected)
        yield SystemCommand("Export…", "Write the compared runs, or those selected in History (else the newest), as "
                            "CSV, Markdown, JSON or HTML", self.export_runs)  # fmt: skip
        yield SystemCommand("Replay…", "Play a stored run in the live screen: an id, an id prefix, last or last~N",
                            self.replay_prompt)  # fmt: skip
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command


def _history_selection(app: Any) -> list[str]:
    history = getattr(app, "history", None)  # the History screen, once opened (it registers itself)
    return list(getattr(history, "selected", []) or [])


def palette_text(text: str) -> str:
    """The command palette reads titles and help as Textual markup: shown as written (`[` escaped)."""
    return shown(text, LINE).replace("[", "\\[")


def _freeze_heap() -> None:
    """Startup objects (modules, CSS, widgets) leave the garbage collector's sight: full collections
    then scan only what the session creates, and stop stalling the event loop (80 -> 30 ms here)."""
    import gc

    gc.freeze()


def _screen(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(f"tui.screens.{module}"), name)


def _preload() -> None:
    """Import what later screens need while the user reads the first one."""
    import gc
    import importlib

    collect = gc.isenabled()
    gc.disable()  # a full collection mid-import holds the GIL and rescans half-built modules: a UI stall
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    finally:
        gc.freeze()  # what was imported stays out of later collections
        if collect:
            gc.enable()


def make_app(db_path: str | None = None, replay: str | None = None, **kw: Any) -> CodebenchApp:
    return CodebenchApp(db_path, replay, **kw)


def run_app(db_path: str | None = None, replay: str | None = None) -> int:
    app = make_app(db_path, replay)
    app.run()
    return app.return_code or 0
