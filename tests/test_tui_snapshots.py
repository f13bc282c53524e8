"""SVG snapshots of every dashboard screen at 100x30 and 80x24, from fixed data (no clock, no engines).

Update after an intended change:  pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from tests.tui_support import fill_store, fixed_check, scripted_events, utc  # noqa: F401  (fixture)
from tui.feed import FeedInfo, ScriptedFeed

SIZES = [pytest.param((100, 30), id="100x30"), pytest.param((80, 24), id="80x24")]


async def settle(pilot, until=lambda app: True, limit: float = 10.0) -> None:
    """Let thread workers and timers finish, then one more refresh."""
    import time

    app = pilot.app
    deadline = time.monotonic() + limit
    await pilot.pause(0.1)
    while True:
        await app.workers.wait_for_complete()
        if until(app):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the app did not settle within {limit:g} s")
        await pilot.pause(0.05)
    await pilot.pause(0.2)
    await app.workers.wait_for_complete()
    from textual.widgets import RichLog

    for log in app.screen.query(RichLog):  # logs follow their end once sized: pin that for the picture
        log.scroll_end(animate=False, immediate=True)
    await pilot.pause(0.1)
    # A DataTable sizes its columns on an idle event; on a busy host that can come after the pauses above, and
    # the picture then has columns cut short (seen twice in CI rehearsals). Wait until none is pending.
    from textual.widgets import DataTable

    tables = [t for screen in app.screen_stack for t in screen.query(DataTable)]  # a dialog shows the screen below
    while any(t._require_update_dimensions or t._updated_cells or t._new_rows for t in tables):
        if time.monotonic() > deadline + limit:
            raise AssertionError("a table did not finish sizing its columns")
        await pilot.pause(0.05)
    await pilot.pause(0.1)


@pytest.fixture
def store(tmp_path, utc):  # noqa: F811
    path = tmp_path / "fixture.db"
    return path, fill_store(path)


def app_for(path, **kw):
    from tui.app import make_app

    return make_app(str(path), check=fixed_check, device="cpu", preload=False, **kw)


@pytest.mark.parametrize("size", SIZES)
def test_setup_screen(snap_compare, store, size, monkeypatch):
    from engines import registry
    from engines.harness import memplan
    from tests.tui_support import fixed_engines

    monkeypatch.setattr(registry, "ENGINES", fixed_engines())
    monkeypatch.setattr(memplan, "device_total", lambda device: 64 << 30)  # the plan's memory line, any host
    path, _ = store
    assert snap_compare(app_for(path), terminal_size=size,
                        run_before=lambda p: settle(p, lambda a: bool(a.screen.choices)))  # fmt: skip


def scripted_feed() -> ScriptedFeed:
    events, cells, labels = scripted_events()
    return ScriptedFeed(FeedInfo("study fixture", "tiny", labels, cells, 64 << 30, 16, 120.0), events)


@pytest.mark.parametrize("size", SIZES)
def test_live_screen(snap_compare, store, size):
    path, _ = store
    feed = scripted_feed()
    assert snap_compare(app_for(path, feed=feed), terminal_size=size,
                        run_before=lambda p: settle(p, lambda a: feed.finished and a.live.state.events > 0))  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_history_screen(snap_compare, store, size):
    path, _ = store

    async def run_before(pilot):
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        await pilot.press("down", "space", "down", "space")  # two runs selected, cursor on the third
        await settle(pilot)

    assert snap_compare(app_for(path), terminal_size=size, run_before=run_before)


def compare_before(ids, keys=()):
    async def run_before(pilot):
        from tui.screens.compare import CompareScreen

        await pilot.app.push_screen(CompareScreen(list(reversed(ids))))
        await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
        await settle(pilot)  # the views' own loads (memory fit, needle map) may lay the screen out once more
        if keys:
            await pilot.press(*keys)
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_compare_table(snap_compare, store, size):
    path, ids = store
    assert snap_compare(app_for(path), terminal_size=size, run_before=compare_before(ids))


@pytest.mark.parametrize("view", ["2", "3", "4"], ids=["tokens-plot", "speedup-map", "memory-plot"])
def test_compare_views(snap_compare, store, view):
    path, ids = store
    assert snap_compare(app_for(path), terminal_size=(100, 30), run_before=compare_before(ids, (view,)))


def test_compare_latency_other_baseline(snap_compare, store):
    path, ids = store
    assert snap_compare(app_for(path), terminal_size=(100, 30), run_before=compare_before(ids, ("m", "b")))


@pytest.mark.parametrize("size", SIZES)
def test_replay_screen(snap_compare, store, size):
    path, ids = store

    async def run_before(pilot):
        await settle(pilot, lambda a: a.live.feed is not None)
        await pilot.press("space", "end")  # paused at the end: the same picture on every machine
        await settle(pilot)

    assert snap_compare(app_for(path, replay=ids[1]), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("keys", [("6",), ("6", "g"), ("m", "m", "m", "m", "m", "m")], ids=["pareto", "pareto-goodput",
                                                                                      "slo-attainment"])
def test_compare_serving_runs(snap_compare, tmp_path, utc, keys):  # noqa: F811
    from tests.tui_support import fill_serving_store

    path = tmp_path / "serving.db"
    ids = fill_serving_store(path)
    assert snap_compare(app_for(path), terminal_size=(100, 30), run_before=compare_before(ids, keys))


def test_export_dialog(snap_compare, store):
    path, ids = store
    assert snap_compare(app_for(path), terminal_size=(80, 24), run_before=compare_before(ids, ("e",)))


def test_cancel_dialog(snap_compare, store):
    path, _ = store
    from tui.screens.modals import ConfirmScreen

    async def run_before(pilot):
        await settle(pilot)
        await pilot.app.push_screen(ConfirmScreen("Cancel the running study? Finished cells are kept.",
                                                  yes="Cancel study", no="Keep running"))  # fmt: skip
        await settle(pilot)

    assert snap_compare(app_for(path, feed=scripted_feed()), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("at", ["", "batch=8,input=128"], ids=["whole-grid", "at-a-point"])
def test_verdict_screen(snap_compare, store, at):
    """Compare's `v`: the verdict over the runs compared, with a constraint typed in (edited live)."""
    path, ids = store

    async def run_before(pilot):
        await compare_before(ids, ("v",))(pilot)
        if at:
            pilot.app.screen.query_one("#v-at").value = at
        pilot.app.screen.query_one("#v-max-mem").value = "8GiB"
        await settle(pilot)

    assert snap_compare(app_for(path), terminal_size=(100, 30), run_before=run_before)
