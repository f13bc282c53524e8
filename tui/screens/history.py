"""History: every stored run, a page at a time (sorted and filtered in SQL), with rename, delete and compare."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input, Static

from store.safe import shown
from tui.status import STATUS_STYLE
from tui.widgets.field import Field
from tui.widgets.footer import Footer
from tui.widgets.runtable import Column, RunTable

PAGE = 100  # rows per page: one SQL page; the table draws only the rows on screen
SORT_KEYS = ("started", "name", "model", "run", "status", "cells", "best", "host")
# Too narrow for all: long cells are cut (…), then host, model and name go, in that order.
COLUMNS = [Column("sel", " ", min_width=1), Column("id", "id"), Column("started", "started"),
           Column("run", "run", shrink=True, min_width=12, soft_width=28), Column("status", "status"),
           Column("cells", "cells", shrink=True, min_width=5), Column("best", "best tok/s", right=True),
           Column("model", "model", drop=2, shrink=True, min_width=6, soft_width=16),
           Column("name", "name", drop=1, shrink=True, min_width=6, soft_width=16),
           Column("host", "host", drop=3, shrink=True, min_width=6)]  # fmt: skip


def _when(ts: float | None) -> str:
    return "-" if not ts else dt.datetime.fromtimestamp(ts).strftime("%y-%m-%d %H:%M")


class HistoryScreen(Screen):
    AUTO_FOCUS = "#hist-table"  # not the filter: the footer would be built twice, first for typing
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter", tooltip="Filter by model, engine, status, name, host or id"),
        Binding("space", "toggle_select", "Select", tooltip="Select or unselect the run under the cursor"),
        Binding("c", "compare", "Compare", tooltip="Compare the selected runs side by side"),
        Binding("p", "replay", "Replay", tooltip="Play the run under the cursor (or press enter on it)"),
        Binding("r", "rename", "Rename", tooltip="Rename the run under the cursor"),
        Binding("d", "delete", "Delete", tooltip="Delete the selected runs (asks first)"),
        Binding("s", "sort", "Sort", tooltip="Sort by the next column"),
        Binding("S", "reverse", "Reverse", show=False, tooltip="Reverse the sort order"),
        Binding("right_square_bracket", "page(1)", "Next page", show=False, tooltip="Next page of runs"),
        Binding("left_square_bracket", "page(-1)", "Prev page", show=False, tooltip="Previous page of runs"),
        Binding("a", "select_page", "Select page", show=False, tooltip="Select every run on this page"),
        Binding("escape", "clear", "Clear", show=False, tooltip="Clear the selection and the filter"),
        Binding("f5", "reload", "Reload", show=False, tooltip="Read the runs again"),
    ]

    class Page(Message):
        def __init__(self, rows: list, total: int, all_runs: int, token: int) -> None:
            super().__init__()
            self.rows, self.total, self.all_runs, self.token = rows, total, all_runs, token

    class Changed(Message):
        """Runs were renamed or deleted (thread -> screen)."""

        def __init__(self, text: str, ok: bool = True) -> None:
            super().__init__()
            self.text, self.ok = text, ok

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        try:  # styled as it mounts: spare the two full CSS re-parses Textual runs on a mode's first switch (~100 ms)
            self._css_update_count = self.app._css_update_count
        except Exception:
            pass
        self.sort, self.descending = "started", True
        self.page_offset = 0
        self.filter_text = ""
        self.selected: list[str] = []  # in selection order: the first is the compare baseline
        self.rows: dict[str, Any] = {}
        self.total = 0
        self.all_runs = 0
        self._token = 0
        self._debounce: Any = None
        self.loaded_at: float | None = None

    def compose(self):
        with Horizontal(id="hist-top"):
            yield Field(placeholder="/ filter: model engine status name host id", id="hist-filter",
                        compact=True)  # fmt: skip
            yield Static(id="hist-status")
        yield RunTable(COLUMNS, id="hist-table")
        yield Footer()

    def on_mount(self) -> None:
        self.app.history = self  # the palette's Compare selected / Export… read the selection
        self._update_header()
        self.reload()

    def on_screen_resume(self) -> None:
        if self.loaded_at is not None:
            self.reload()

    # --- loading -----------------------------------------------------------------------------

    def reload(self) -> None:
        self._token += 1
        token, app = self._token, self.app
        args = (self.filter_text, self.sort, self.descending, PAGE, self.page_offset)
        self.query_one("#hist-status", Static).update(Text("loading…", style="dim"))

        def work() -> None:  # thread
            from store.history import count_matching, run_page
            from store.queries import count_runs

            with app.database().session() as s:
                rows = run_page(*args, session=s)
                total = count_matching(args[0], session=s)
                all_runs = count_runs(session=s) if args[0] else total
            self.post_message(self.Page(rows, total, all_runs, token))

        self.run_worker(work, thread=True, exclusive=True, group="history", exit_on_error=False)

    @on(Page)
    def _page(self, message: Page) -> None:
        if message.token != self._token:
            return  # a newer filter or sort is on its way
        import time

        self.loaded_at = time.monotonic()
        self.total, self.all_runs = message.total, message.all_runs
        table = self.query_one("#hist-table", RunTable)
        cursor_key = table.cursor_key
        self.rows = {r.id: r for r in message.rows}
        table.set_rows(list(self.rows), [self._cells(r) for r in message.rows], cursor_key)
        self._update_header()
        self._status()

    def _mark(self, run_id: str) -> Any:
        return (("✓", "bold green"),) if run_id in self.selected else " "

    def _cells(self, r: Any) -> list[Any]:
        """Plain strings, or (text, style) pieces where a colour says something."""
        bad = " ".join(f"{n} {k}" for k, n in r.bad.items())
        done = f"{r.done}/{r.cells_total}"
        return [
            self._mark(r.id),
            ((r.id[:8], "bold"),),
            _when(r.created_at),
            r.label,
            ((shown(r.status, 12), STATUS_STYLE.get(r.status, "")),),  # an imported status must not crowd out the rest
            ((done, ""), (f" {bad}", "red")) if bad else done,
            "-" if r.best_tps is None else f"{r.best_tps:,.1f}",
            r.model,
            r.name or "",
            r.host,
        ]

    def _status(self) -> None:
        first = self.page_offset + 1 if self.total else 0
        last = min(self.page_offset + PAGE, self.total)
        text = f"{first}–{last} of {self.total:,}"
        if self.filter_text:
            text += f" (of {self.all_runs:,})"
        text += f" · sort {self.sort} {'↓' if self.descending else '↑'}"
        if self.selected:
            text += f" · {len(self.selected)} selected"
        self.query_one("#hist-status", Static).update(text)

    def _update_header(self) -> None:
        mark = " ↓" if self.descending else " ↑"
        labels = {c.key: c.label + (mark if c.key == self.sort else "") for c in COLUMNS}
        self.query_one("#hist-table", RunTable).set_labels(labels)

    def _cursor_id(self) -> str | None:
        return self.query_one("#hist-table", RunTable).cursor_key

    # --- filter ------------------------------------------------------------------------------

    @on(Input.Changed, "#hist-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(0.15, lambda: self._apply_filter(event.value))

    def _apply_filter(self, value: str) -> None:
        if value.strip() != self.filter_text:
            self.filter_text = value.strip()
            self.page_offset = 0
            self.reload()

    @on(Input.Submitted, "#hist-filter")
    def _filter_done(self) -> None:
        self.query_one("#hist-table", RunTable).focus()

    @on(RunTable.HeaderSelected)
    def _header(self, event: RunTable.HeaderSelected) -> None:
        key = event.column_key
        if key in SORT_KEYS:
            self.descending = not self.descending if key == self.sort else key in ("started", "best", "cells")
            self.sort = key
            self.page_offset = 0
            self.reload()

    @on(RunTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_replay()

    # --- actions -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        filter_focused = isinstance(self.focused, Input)
        if filter_focused and action in ("toggle_select", "compare", "rename", "delete", "sort", "reverse", "replay",
                                         "select_page", "page"):  # fmt: skip
            return False  # typing in the filter
        return True

    def action_focus_filter(self) -> None:
        self.query_one("#hist-filter", Input).focus()

    def action_clear(self) -> None:
        if isinstance(self.focused, Input):
            self.query_one("#hist-table", RunTable).focus()
            return
        self.selected.clear()
        if self.filter_text:
            self.query_one("#hist-filter", Input).value = ""
        self.reload()

    def action_toggle_select(self) -> None:
        run_id = self._cursor_id()
        if run_id is None:
            return
        if run_id in self.selected:
            self.selected.remove(run_id)
        else:
            self.selected.append(run_id)
        table = self.query_one("#hist-table", RunTable)
        table.update_cell(run_id, "sel", self._mark(run_id))
        table.move_cursor(table.cursor_row + 1)
        self._status()

    def action_select_page(self) -> None:
        for run_id in self.rows:
            if run_id not in self.selected:
                self.selected.append(run_id)
        self.reload()

    def action_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        self.descending = self.sort in ("started", "best", "cells")
        self.page_offset = 0
        self.reload()

    def action_reverse(self) -> None:
        self.descending = not self.descending
        self.page_offset = 0
        self.reload()

    def action_page(self, step: int) -> None:
        offset = self.page_offset + int(step) * PAGE
        if 0 <= offset < max(self.total, 1):
            self.page_offset = offset
            self.reload()

    def action_reload(self) -> None:
        self.reload()

    def compare_ids(self) -> list[str]:
        ids = list(self.selected)
        cursor = self._cursor_id()
        if len(ids) == 1 and cursor and cursor not in ids:
            ids.append(cursor)
        return ids

    def action_compare(self) -> None:
        ids = self.compare_ids()
        if len(ids) < 2:
            self.notify("select two or more runs with space, then press c", severity="warning")
            return
        from tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(ids))

    def action_replay(self) -> None:
        run_id = self._cursor_id()
        if run_id is None:
            return
        from tui.screens.live import LiveScreen

        self.app.push_screen(LiveScreen(replay_run=run_id, speed=getattr(self.app, "replay_speed", None)))

    def action_rename(self) -> None:
        run_id = self._cursor_id()
        if run_id is None:
            return
        from tui.screens.modals import PromptScreen

        current = self.rows[run_id].name or ""

        def done(name: str | None) -> None:
            if name is None:
                return
            self._write(lambda s: _rename(s, run_id, name or None), f"renamed {run_id[:8]} to '{name}'")

        self.app.push_screen(PromptScreen(f"Name for run {run_id[:8]} (empty clears it)", current,
                                          allow_empty=True), done)  # fmt: skip

    def action_delete(self) -> None:
        ids = list(self.selected) or ([self._cursor_id()] if self._cursor_id() else [])
        if not ids:
            return
        from tui.screens.modals import ConfirmScreen

        what = f"run {ids[0][:8]}" if len(ids) == 1 else f"{len(ids)} runs"

        def done(yes: bool | None) -> None:
            if yes:
                self.selected = [i for i in self.selected if i not in ids]
                self._write(lambda s: _delete(s, ids), f"deleted {what}")

        self.app.push_screen(ConfirmScreen(f"Delete {what} with all cells and telemetry? This cannot be undone.",
                                           yes="Delete"), done)  # fmt: skip

    def _write(self, fn: Any, text: str) -> None:
        app = self.app

        def work() -> None:
            try:
                db = app.database()
                db.writable()
                with db.session() as s:
                    fn(s)
                    s.commit()
            except Exception as exc:  # noqa: BLE001 - a refused delete, a locked or read-only file: say why
                from store.db import StoreError, failure

                why = exc if isinstance(exc, StoreError) else failure(app.resolved_db_path() or "the database", exc)
                self.post_message(self.Changed(str(why), ok=False))
                return
            self.post_message(self.Changed(text))

        self.run_worker(work, thread=True, group="history-write", exit_on_error=False)

    @on(Changed)
    def _changed(self, message: Changed) -> None:
        self.notify(message.text, severity="information" if message.ok else "error", markup=False)
        self.reload()

    def palette_commands(self):
        for key in SORT_KEYS:
            yield (f"History: sort by {key}", f"Sort the runs by {key}", lambda k=key: self._sort_by(k))

    def _sort_by(self, key: str) -> None:
        self.sort, self.descending, self.page_offset = key, key in ("started", "best", "cells"), 0
        self.reload()


def _rename(session: Any, run_id: str, name: str | None) -> None:
    from store.queries import rename_run

    rename_run(run_id, name, session=session)


def _delete(session: Any, ids: list[str]) -> None:
    from store.queries import delete_runs

    delete_runs(ids, session=session)
