"""Hostile data on every dashboard screen (Setup, Live, History, Compare in each tab, Replay, the dialogs, the
command palette, notifications): what the driver would write holds no control character of the data, markup is
shown as written (no link, no click action, no crash), and a 100 kB name is cut to a bounded width.
"""

from __future__ import annotations

import pytest

from tests.test_terminal_safety_cli import assert_clean, hostile_db  # noqa: F401  (fixture)
from tests.test_tui_snapshots import settle
from tests.tui_support import (HOSTILE, fill_hostile_store, fixed_check, fixed_engines, hostile,  # noqa: F401
                               hostile_events, screen_output, utc, visible)
from tui.feed import FeedInfo, ScriptedFeed

SIZE = (160, 45)


@pytest.fixture
def hex_db(tmp_path, utc):  # noqa: F811
    """The hostile store with hex ids: the Compare screen opens runs by id."""
    path = tmp_path / "hostile.db"
    return path, fill_hostile_store(path, hostile_id=False)


def app_for(path, **kw):
    from tui.app import make_app

    return make_app(str(path), check=fixed_check, device="cpu", preload=False, **kw)


def assert_screen(app, *must_show: str) -> str:
    """The current screen, drawn in full, holds no control character of the data and shows `must_show` as is."""
    assert app.return_code is None and not app._exit_renderables, "the app stopped"
    out = screen_output(app)
    assert_clean(out, *must_show)
    return visible(out)


def run_app(app, body, size=SIZE):
    import asyncio

    async def main():
        async with app.run_test(size=size, notifications=True) as pilot:
            await body(pilot)
        assert not app._exit_renderables, "the app stopped on an error"

    asyncio.run(main())


def test_history(hostile_db):
    path, ids = hostile_db
    app = app_for(path)

    async def body(pilot):
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        assert_screen(app, "N0[bold red]", "L0[link=https://evil]", "␛")
        await pilot.press("d")  # the newest run: the hostile id
        await settle(pilot)
        assert_screen(app, "␛]0;id")
        await pilot.press("n")
        await pilot.press("down", "down", "r")  # the oldest run: the hostile name, in the rename field
        await settle(pilot)
        assert_screen(app, "N0[bold red]")
        await pilot.press("ctrl+u", *"[/]new[link=https://evil]x[/link]", "enter")  # a name typed carelessly
        await settle(pilot, lambda a: any("renamed" in str(n.message) for n in a._notifications))
        assert_screen(app, "[/]new[link=https://evil]x[/link]")
        await pilot.press("home", "space", "down", "space", "c")  # the hostile id: Compare says it cannot open it
        await settle(pilot)
        assert_screen(app, "␛]0;id")

    run_app(app, body)


def compare_app(path, ids):
    from tui.screens.compare import CompareScreen

    async def open_compare(pilot):
        await pilot.app.push_screen(CompareScreen(list(ids)))
        await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))

    return open_compare


@pytest.mark.parametrize("keys", [(), ("2",), ("3",), ("4",), ("m", "m", "m", "m"), ("b",)],
                         ids=["table", "tokens", "speedup", "memory", "peak-mem", "baseline"])
def test_compare_screen(hex_db, keys):
    path, ids = hex_db
    app = app_for(path)

    async def body(pilot):
        await compare_app(path, ids)(pilot)
        if keys:
            await pilot.press(*keys)
            await settle(pilot)
        text = assert_screen(app)
        assert "␛" in text or keys, "the hostile names are not on the table"
        from textual.widgets import DataTable

        table = app.screen.query_one("#cmp-table", DataTable)
        assert max(c.get_render_width(table) for c in table.columns.values()) <= 60, "a long string widened a column"

    run_app(app, body)


def test_compare_dialogs_palette_and_notifications(hex_db, tmp_path):
    path, ids = hex_db
    app = app_for(path)
    target = tmp_path / "out[" / "][bold red]x.md"
    target.parent.mkdir()

    async def body(pilot):
        await compare_app(path, ids)(pilot)
        await pilot.press("e")
        await settle(pilot)
        assert_screen(app, "␛")  # the file name holds the hostile id
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("ctrl+p")
        await settle(pilot)
        assert_screen(app, "[/]")
        await pilot.press(*"baseline")
        await settle(pilot)
        assert_screen(app)
        await pilot.press("escape")
        await settle(pilot)
        app.screen.export("md", target)
        await settle(pilot, lambda a: bool(a._notifications))
        assert_screen(app, "[/][bold red]x.md")

    run_app(app, body)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_replay_screen(hostile_db, which):
    path, ids = hostile_db
    app = app_for(path, replay=ids[which])

    async def body(pilot):
        if which == 2:  # store.queries refuses the hostile id: the error names it
            await settle(pilot, lambda a: "cannot replay" in str(a.live.query_one("#live-head").render()))
            assert_screen(app, "␛]0;id")
            return
        await settle(pilot, lambda a: a.live.feed is not None)
        await pilot.press("space", "end")
        await settle(pilot)
        if which == 0:
            assert_screen(app, "N0[bold red]␛", "L0[link=https://evil]", "␛")
        else:  # the 100 kB name, cut in the title
            head = str(app.live.query_one("#live-head").render())
            assert "LONGxxx" in head and "…" in head and len(head) < 400
            assert_screen(app, "L1[/]␛")

    run_app(app, body)


def test_live_screen_and_cancel_dialog(hostile_db):
    path, _ = hostile_db
    events, cells, labels = hostile_events()
    feed = ScriptedFeed(FeedInfo(hostile("TITLE"), HOSTILE["model0"], labels, cells, 64 << 30, 16, 120.0), events)
    app = app_for(path, feed=feed)

    async def body(pilot):
        await settle(pilot, lambda a: feed.finished and a.live.state.events > 0)
        assert_screen(app, "TITLE[/]", "L0[link=https://evil]", "LOG2[/]", "␛")
        from tui.screens.modals import ConfirmScreen

        await app.push_screen(ConfirmScreen("Cancel the running study? Finished cells are kept.", yes="Cancel study",
                                            no="Keep running"))  # fmt: skip
        await settle(pilot)
        assert_screen(app)

    run_app(app, body)


def test_setup_screen_recent_models(hostile_db, monkeypatch):
    from engines import registry

    monkeypatch.setattr(registry, "ENGINES", fixed_engines())
    path, _ = hostile_db
    app = app_for(path)

    async def body(pilot):
        from textual.widgets import Select

        await settle(pilot, lambda a: bool(a.screen.choices))
        assert_screen(app)
        pick = app.screen.query_one("#model-pick", Select)
        pick.expanded = True
        await settle(pilot)
        await pilot.press("end")  # recent models come last
        await settle(pilot)
        assert_screen(app, "M0[@click=app.quit]x[/]␛")
        pick.expanded = False
        await settle(pilot)
        pick.value = next(v for _, v in pick._options if isinstance(v, str) and v.startswith("M0"))
        await settle(pilot)
        assert_screen(app, "M0[@click=app.quit]x[/]")  # in the model field and its message
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"Model")
        await settle(pilot)
        assert_screen(app)

    run_app(app, body)
