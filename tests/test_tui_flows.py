"""Pilot tests of each dashboard flow, driven from the keyboard; they assert on the message stream and the store."""

from __future__ import annotations

import asyncio
import functools
import json
import time

import pytest

from engines.study import events as ev
from tests.helpers import rows  # noqa: E402
from tests.test_tui_snapshots import settle
from tests.tui_support import fill_store, utc  # noqa: F401  (fixture)
from tui.screens.live import LiveScreen


def aio(fn):
    """Run an async test body in its own event loop (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


class Messages:
    """The message hook: every message any pump received, in order."""

    def __init__(self) -> None:
        self.seen: list = []

    def __call__(self, message) -> None:
        if not any(message is m for m in self.seen[-50:]):  # a bubbling message reaches several pumps
            self.seen.append(message)

    def of(self, cls) -> list:
        return [m for m in self.seen if isinstance(m, cls)]


async def focus(pilot, widget_id: str, limit: int = 40) -> None:
    """Tab through the form until `widget_id` has focus, as a user would."""
    for _ in range(limit):
        if pilot.app.focused is not None and pilot.app.focused.id == widget_id:
            return
        await pilot.press("tab")
    raise AssertionError(f"tab never reached #{widget_id} (focused: {pilot.app.focused})")


async def type_into(pilot, widget_id: str, text: str) -> None:
    await focus(pilot, widget_id)
    await pilot.press("end", "ctrl+u", *list(text))


async def wait_for(pilot, cond, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        await pilot.pause(0.2)


@pytest.fixture
def store(tmp_path, utc):  # noqa: F811
    path = tmp_path / "fixture.db"
    return path, fill_store(path)


async def small_study(pilot, batch: str = "1,2", name: str = "pilot study") -> None:
    await wait_for(pilot, lambda: bool(pilot.app.screen.choices), 60, "engine checks")
    for widget_id, text in (("grid-batch", batch), ("grid-input_len", "8"), ("grid-output_len", "4"),
                            ("timing-warmup", "0"), ("timing-iters", "1"), ("timing-repeats", "1"), ("name", name)):  # fmt: skip
        await type_into(pilot, widget_id, text)


@aio
async def test_setup_and_run_tiny_from_the_keyboard(tiny_model, tmp_path):
    from tui.app import make_app

    db = tmp_path / "runs.db"
    hook = Messages()
    app = make_app(str(db))
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await small_study(pilot)
        assert "2 cells" in str(app.screen.query_one("#plan-msg").render())
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: hook.of(LiveScreen.StudyFinished), 300, "the study to finish")
        await pilot.pause(0.3)
        live = app.live
        assert app.screen is live
        assert len(live.query_one("#live-results").lines) == 2
        assert "finished" in str(live.query_one("#live-head").render())

    finished = hook.of(LiveScreen.StudyFinished)[0]
    assert finished.status == "done" and len(finished.run_ids) == 1
    # Events reach the screen in batches from the timer, never one message per event.
    batches = [m for m in hook.of(LiveScreen.Events) if m.events]
    events = [e for m in batches for e in m.events]
    assert len(batches) < len(events)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds.count("cell_finished") == 2 and "run_finished" in kinds
    assert "telemetry" in kinds and "progress" in kinds
    assert all(isinstance(e, ev.Event) for e in events)
    # What landed in the store is what the CLI's runner writes.
    (run,) = rows(db, "select id, name, status, engine, cells_total from run")
    assert run[1:] == ("pilot study", "done", "hf-generate", 2)
    assert run[0] == finished.run_ids[0]
    assert rows(db, "select batch, input_len, output_len, status from cell order by idx") == [(1, 8, 4, "done"),
                                                                                              (2, 8, 4, "done")]  # fmt: skip
    assert rows(db, "select count(*) from telemetry")[0][0] > 0
    spec = json.loads(rows(db, "select spec from run_group")[0][0])
    assert {k: spec["grid"][k] for k in ("batch", "input_len", "output_len")} == {"batch": [1, 2], "input_len": [8],
                                                                                  "output_len": [4]}  # fmt: skip


@aio
async def test_cancel_asks_first_and_keeps_finished_cells(tiny_model, tmp_path):
    from tui.app import make_app

    db = tmp_path / "runs.db"
    hook = Messages()
    app = make_app(str(db))
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await small_study(pilot, batch="1:41", name="to cancel")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.live.state.finished_cells >= 1, 300, "a finished cell")
        await pilot.press("x")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("n")  # keep running
        await pilot.pause(0.3)
        assert app.live.study_running
        await pilot.press("x")
        await pilot.pause(0.2)
        await pilot.press("y")
        await wait_for(pilot, lambda: hook.of(LiveScreen.StudyFinished), 120, "the cancel")
    assert hook.of(LiveScreen.StudyFinished)[0].status == "cancelled"
    ((status,),) = rows(db, "select status from run")
    assert status == "cancelled"
    statuses = [s for (s,) in rows(db, "select status from cell")]
    assert 1 <= statuses.count("done") < 40


@aio
async def test_live_validation_blocks_bad_input(store):
    from tui.app import make_app

    path, _ = store
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.choices), 60, "engine checks")
        await type_into(pilot, "grid-batch", "0,2")
        assert "below 1" in str(app.screen.query_one("#grid-msg").render())
        assert app.screen.query_one("#grid-batch").has_class("-invalid")
        await type_into(pilot, "model", "./no/such/model")
        assert "does not exist" in str(app.screen.query_one("#model-msg").render())
        await pilot.press("ctrl+r")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "SetupScreen"  # nothing started
        assert rows(path, "select count(*) from run")[0][0] == 3


@aio
async def test_setup_refuses_a_huge_grid_or_count_as_you_type(store):
    """A 4097 x 4097 grid typed key by key stays responsive and is refused; so is a 400-digit repeat count."""
    from tui.app import make_app

    path, _ = store
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.choices), 60, "engine checks")
        started = time.monotonic()
        await type_into(pilot, "grid-batch", "1:4097")
        await type_into(pilot, "grid-input_len", "1:4097")
        await pilot.pause(0.2)
        assert "more than 10,000" in str(app.screen.query_one("#grid-msg").render())
        assert time.monotonic() - started < 20, "each key must re-plan quickly"
        await type_into(pilot, "grid-batch", "1")
        await type_into(pilot, "grid-input_len", "8")
        await type_into(pilot, "timing-repeats", "9" * 400)
        await pilot.pause(0.2)
        assert "repeats" in str(app.screen.query_one("#grid-msg").render())
        assert app.screen.query_one("#timing-repeats").has_class("-invalid")
        await pilot.press("ctrl+r")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "SetupScreen"  # nothing started
        assert rows(path, "select count(*) from run")[0][0] == 3


@aio
async def test_study_file_is_the_clis(store, tmp_path):
    """Save from the dashboard, check the CLI reads it, load it back into a fresh form."""
    from engines.study.schema import load_study
    from tests.helpers import cli
    from tui.app import make_app

    path, _ = store
    study = tmp_path / "s.json"
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await small_study(pilot, batch="1,2,4", name="saved")
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        await pilot.press("ctrl+u", *list(str(study)), "enter")
        await pilot.pause(0.2)
        saved = load_study(study)
        assert saved == app.screen.build()
        assert saved.grid.batch == [1, 2, 4] and saved.name == "saved" and saved.timing.repeats == 1
    dry = cli("run", "--study", str(study), "--dry-run", db=tmp_path / "cli.db", check=True)
    assert "1 run(s) x 3 cells" in dry.stdout

    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.choices), 60, "engine checks")
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        await pilot.press("ctrl+u", *list(str(study)), "enter")
        await pilot.pause(0.3)
        assert app.screen.query_one("#grid-batch").value == "1,2,4"
        assert app.screen.build() == saved


@aio
async def test_history_rename_delete(store):
    from tui.app import make_app

    path, ids = store
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        history = app.screen
        assert history.query_one("#hist-table").row_count == 3
        # newest first: the cursor is on ids[2]
        await pilot.press("r")
        await pilot.pause(0.2)
        await pilot.press("ctrl+u", *list("fast one"), "enter")
        await settle(pilot, lambda a: rows(path, "select name from run where id=?", ids[2])[0][0] == "fast one")
        assert rows(path, "select name from run where id=?", ids[2]) == [("fast one",)]
        # filter, then delete with confirmation
        await pilot.press("slash", *list("bf16"))
        await settle(pilot, lambda a: a.screen.query_one("#hist-table").row_count == 1)
        await pilot.press("enter")  # leaves the filter
        await pilot.press("d")
        await pilot.pause(0.2)
        await pilot.press("n")
        await pilot.pause(0.2)
        assert rows(path, "select count(*) from run")[0][0] == 3
        await pilot.press("d")
        await pilot.pause(0.2)
        await pilot.press("y")
        await settle(pilot, lambda a: rows(path, "select count(*) from run")[0][0] == 2)
    assert [r[0] for r in rows(path, "select id from run order by created_at")] == [ids[0], ids[2]]
    assert rows(path, "select count(*) from cell where run_id=?", ids[1])[0][0] == 0


@aio
async def test_compare_two_runs_export_and_copy(store, tmp_path, monkeypatch):
    from store.export import render
    from tests.helpers import cli
    from tui.app import make_app
    from tui.screens.compare import CompareScreen

    monkeypatch.chdir(tmp_path)
    path, ids = store
    hook = Messages()
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        await pilot.press("space", "space", "c")  # ids[2] (baseline), ids[1]
        await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
        cmp = app.screen
        assert isinstance(cmp, CompareScreen) and [r.id for r in cmp.results] == [ids[2], ids[1]]
        table = cmp.query_one("#cmp-table")
        assert table.row_count == 8
        assert any("OOM" in str(c) for c in table.get_row_at(7)) or any("OOM" in str(c) for r in range(8)
                                                                         for c in table.get_row_at(r))  # fmt: skip
        await pilot.press("m")
        assert cmp.metric == "latency_s"
        await pilot.press("m", "m", "m", "m", "b")
        assert cmp.metric == "tokens_per_s" and cmp.baseline == 1
        await pilot.press("y")
        assert app.clipboard.startswith("**tok/s by cell**") and "| batch | input |" in app.clipboard
        for view in ("2", "3", "4", "1"):
            await pilot.press(view)
        # export from the dialog: format with the arrows, file name, enter
        await pilot.press("e")
        await pilot.pause(0.2)
        await pilot.press("down", "down", "down", "enter", "tab")  # html
        await pilot.press("ctrl+u", *list("out.html"), "enter")
        await settle(pilot, lambda a: (tmp_path / "out.html").exists())
        await pilot.press("e")
        await pilot.pause(0.2)
        await pilot.press("tab", "ctrl+u", *list("cmp.csv"), "enter")
        await settle(pilot, lambda a: (tmp_path / "cmp.csv").exists())
    html = (tmp_path / "out.html").read_text()
    assert html.startswith("<!doctype html>") and ids[1][:8] in html and "OOM" in html
    headless = cli("export", ids[2], ids[1], "--format", "csv", "--baseline", ids[1], db=path, check=True)
    assert (tmp_path / "cmp.csv").read_text() == headless.stdout
    assert render  # the same exporter behind both


@aio
async def test_replay_pause_and_seek(store):
    from tui.app import make_app

    path, ids = store
    hook = Messages()
    app = make_app(str(path), replay=ids[0], preload=False, replay_speed=1.0)
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await settle(pilot, lambda a: a.live.feed is not None)
        live = app.live
        await pilot.press("space")
        assert live.feed.paused
        await pilot.press("end")
        await settle(pilot, lambda a: live.state.finished_cells == 8)
        assert len(live.query_one("#live-results").lines) == 8
        assert live.state.status == "finished" and len(live.state.cpu) > 10 and len(live.state.gpus) == 2
        await pilot.press("home")
        await settle(pilot)
        assert live.state.finished_cells == 0 and len(live.query_one("#live-results").lines) == 0
        assert any(m.reset for m in hook.of(LiveScreen.Events))
        await pilot.press("right", "right", "right")
        await settle(pilot)
        assert 0 < live.feed.position - live.feed.start < live.feed.duration
        pos = live.feed.position
        await pilot.pause(0.5)
        assert live.feed.position == pos  # paused: the clock stands still
        await pilot.press("space")
        await wait_for(pilot, lambda: live.feed.position > pos, 10, "the replay to play on")


@aio
async def test_replay_from_history_and_back(store):
    from tui.app import make_app

    path, ids = store
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        await pilot.press("enter")
        await settle(pilot, lambda a: isinstance(a.screen, LiveScreen) and a.screen.feed is not None)
        replay = app.screen
        assert replay is not app.live and replay.feed.kind == "replay"
        await pilot.press("end")
        await settle(pilot, lambda a: replay.state.finished_cells == 8)
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "HistoryScreen"


@aio
async def test_every_binding_is_in_the_command_palette(store):
    from tui.app import make_app

    path, ids = store
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda a: bool(a.screen.choices))
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Start", "Save study", "Load study", "Setup", "Live", "History", "Quit"} <= titles
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Filter", "Select", "Compare", "Rename", "Delete", "Sort", "Replay", "History: sort by best"} <= titles
        await pilot.press("space", "space", "c")
        await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        assert {"Metric", "Baseline", "Export", "Copy MD", "Compare: metric peak MB"} <= set(commands)
        commands["Compare: metric peak MB"].callback()
        assert app.screen.metric == "peak_mem"
        # the palette itself opens and finds them
        await _palette(pilot, "copy md")
        assert app.clipboard.startswith("**peak MB by cell**")


@aio
async def test_tp_and_executor_fields_reach_the_spec_and_the_study_file(store, tmp_path):
    from engines.study.schema import load_study
    from tui.app import make_app

    path, _ = store
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await small_study(pilot, batch="1", name="scale")
        await type_into(pilot, "executor", "ray://cluster")
        assert app.screen.query_one("#executor").has_class("-invalid")
        assert "unknown executor" in str(app.screen.query_one("#grid-msg").render())
        await type_into(pilot, "executor", "ray://head:10001?cpus=4")
        await type_into(pilot, "tp", "1,2")
        assert not app.screen.query_one("#executor").has_class("-invalid")
        spec = app.screen.build()
        assert spec.executor == "ray://head:10001?cpus=4"
        assert [r.tp for r in spec.runs] == [1, 2] and spec.runs[1].label().endswith("tp=2")
        assert "via ray://head:10001?cpus=4" in str(app.screen.query_one("#plan-msg").render())
        study = tmp_path / "scale.json"
        study.write_text(spec.to_json())
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.choices), 60, "engine checks")
        app.screen.fill(load_study(study))
        await pilot.pause(0.2)
        assert app.screen.query_one("#tp").value == "1,2"
        assert app.screen.build() == load_study(study)


async def _palette(pilot, text: str) -> None:
    """Type into the command palette and press Enter once its search for the whole text has ended (the palette
    gathers matches in a worker: Enter on a loaded host could pick a match for a shorter prefix)."""
    from textual.command import CommandList, CommandPalette
    from textual.widgets import Input
    from textual.worker import WorkerState

    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, CommandPalette), 10, "the command palette")
    palette = pilot.app.screen
    await pilot.press(*list(text))

    def settled() -> bool:
        searching = any(w.group == palette._GATHER_COMMANDS_GROUP and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                        for w in pilot.app.workers)  # fmt: skip
        return palette.query_one(Input).value == text and not searching and \
            palette.query_one(CommandList).highlighted is not None  # fmt: skip

    await wait_for(pilot, settled, 10, f"the palette's matches for {text!r}")
    await pilot.press("enter")
    await pilot.pause(0.3)


@aio
async def test_the_palette_reaches_compare_export_and_replay(store):
    from tui.app import make_app

    path, ids = store
    app = make_app(str(path), preload=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda a: bool(a.screen.choices))
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Compare last two runs", "Compare selected", "Export…", "Replay…"} <= titles
        await _palette(pilot, "compare last two")
        await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
        newest = [r[0] for r in rows(path, "select id from run order by created_at desc limit 2")]
        assert [r.id for r in app.screen.results] == newest[::-1]  # the older is the baseline
        await pilot.press("escape")
        await _palette(pilot, "compare selected")  # nothing selected yet: it says how
        assert app.screen.__class__.__name__ != "CompareScreen"
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        await pilot.press("space", "down", "space")
        chosen = list(app.screen.selected)
        await _palette(pilot, "compare selected")
        await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
        assert [r.id for r in app.screen.results] == chosen
        await pilot.press("escape")
        await _palette(pilot, "export")  # History's selection, in Compare's export dialog
        await settle(pilot, lambda a: a.screen.__class__.__name__ == "ExportScreen")
        await pilot.press("escape")
        await pilot.pause(0.2)
        await pilot.press("escape", "f2")  # on Setup, where no Replay binding of History's competes
        await pilot.pause(0.2)
        await _palette(pilot, "replay")
        await settle(pilot, lambda a: a.screen.__class__.__name__ == "PromptScreen")
        await pilot.press("enter")  # "last"
        await settle(pilot, lambda a: isinstance(a.screen, LiveScreen) and a.screen.state.finished_cells > 0)
        assert app.screen.run_ids == [newest[0]]
