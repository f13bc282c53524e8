"""A light table of one-line rows: draws only the lines on screen, straight from strings to segments.

Textual's DataTable renders every cell through a Rich console and measures every cell it holds; for
History (a page of runs, ten columns) that was most of the time it took to open. Here a cell is a
plain string or a few (text, style) fragments, column widths come from string lengths, and columns
that do not fit are dropped (by priority) or cut with an ellipsis, so nothing scrolls sideways.
Cells become segments as they are, so every cell and label is shown (store.safe) on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from store.safe import shown

Fragments = tuple[tuple[str, str], ...]  # (text, style) pieces of one cell
Cell = Union[str, Fragments]
WIDEST = 200  # no column is drawn wider; longer cells are cut on the way in


def _safe(cell: Cell) -> Cell:
    if isinstance(cell, tuple):
        return tuple((shown(text, WIDEST), style) for text, style in cell)
    return shown(cell, WIDEST)  # a str, or whatever a column of an imported run holds


@dataclass
class Column:
    key: str
    label: str
    right: bool = False  # right-aligned
    drop: int = 0  # > 0: left out when the table is too narrow, highest first
    shrink: bool = False  # may be cut (with …) to fit
    min_width: int = 3  # cut no further than this
    soft_width: int = 12  # cut to this before any column is dropped


def _width(cell: Cell) -> int:
    return cell_len(cell) if isinstance(cell, str) else sum(cell_len(t) for t, _ in cell)


def _fragments(cell: Cell, width: int, right: bool) -> list[tuple[str, str]]:
    """The cell padded or cut to exactly `width` cells."""
    parts = [(cell, "")] if isinstance(cell, str) else list(cell)
    total = sum(cell_len(t) for t, _ in parts)
    if total <= width:
        pad = (" " * (width - total), "")
        return [pad, *parts] if right else [*parts, pad]
    out, used, style = [], 0, ""
    for text, style in parts:  # cut: at most width - 1 cells, then the ellipsis
        room = width - 1 - used
        if room <= 0:
            break
        piece = text if cell_len(text) <= room else set_cell_size(text, room).rstrip()
        out.append((piece, style))
        used += cell_len(piece)
        if piece is not text:
            break
    out.append(("…", style))
    pad = (" " * (width - 1 - used), "")
    return [pad, *out] if right else [*out, pad]


class RunTable(ScrollView, can_focus=True):
    """Rows of cells under a pinned header, with a row cursor; `RowSelected` on enter, `HeaderSelected` on a
    header click. Rows are replaced as a whole (`set_rows`) or one cell at a time (`update_cell`)."""

    DEFAULT_CSS = """
    RunTable {
        overflow-x: hidden;
        background: $surface;
        color: $foreground;
        & > .run-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .run-table--even-row { background: $surface-lighten-1 50%; }
        & > .run-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus {
            background-tint: $foreground 5%;
            & > .run-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        &:dark > .run-table--even-row { background: $surface-darken-1 40%; }
    }
    """
    COMPONENT_CLASSES = {"run-table--header", "run-table--even-row", "run-table--cursor"}
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor_to(0)", "First", show=False),
        Binding("end", "cursor_to(-1)", "Last", show=False),
        Binding("enter", "select", "Open", show=False),
    ]

    class RowSelected(Message):
        def __init__(self, table: RunTable, key: str) -> None:
            super().__init__()
            self.table, self.key = table, key

        @property
        def control(self) -> RunTable:
            return self.table

    class HeaderSelected(Message):
        def __init__(self, table: RunTable, column_key: str) -> None:
            super().__init__()
            self.table, self.column_key = table, column_key

        @property
        def control(self) -> RunTable:
            return self.table

    def __init__(self, columns: Sequence[Column], **kw) -> None:
        super().__init__(**kw)
        self.columns = list(columns)
        self.labels = {c.key: shown(c.label, WIDEST) for c in self.columns}
        self.keys: list[str] = []
        self.rows: list[list[Cell]] = []
        self._index: dict[str, int] = {}
        self.cursor_row = 0
        self._natural: list[int] = []  # per column: its widest cell or label
        self._layout: list[tuple[int, int]] = []  # (column index, width) of the shown columns
        self._lines: dict[tuple, Strip] = {}
        self._styles: tuple[Style, Style, Style, Style] | None = None

    # --- data ------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def cursor_key(self) -> str | None:
        return self.keys[self.cursor_row] if 0 <= self.cursor_row < len(self.keys) else None

    def row_index(self, key: str) -> int | None:
        return self._index.get(key)

    def set_rows(self, keys: list[str], rows: list[list[Cell]], cursor_key: str | None = None) -> None:
        self.keys, self.rows = list(keys), [[_safe(c) for c in row] for row in rows]
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._natural = [max([cell_len(c.label)] + [_width(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]
        row = self._index.get(cursor_key, 0) if cursor_key is not None else 0
        self.cursor_row = min(row, max(len(rows) - 1, 0))
        self._relayout()
        self.scroll_to(y=0, animate=False, immediate=True)
        self._follow_cursor()

    def update_cell(self, key: str, column: str, cell: Cell) -> None:
        row, col = self._index.get(key), next((i for i, c in enumerate(self.columns) if c.key == column), None)
        if row is None or col is None:
            return
        self.rows[row][col] = cell = _safe(cell)
        if _width(cell) > self._natural[col]:
            self._natural[col] = _width(cell)
            self._relayout()
        else:
            self._drop_row(row)

    def set_labels(self, labels: dict[str, str]) -> None:
        if labels == self.labels:
            return
        self.labels = {key: shown(label, WIDEST) for key, label in labels.items()}
        self._natural = [max(n, cell_len(self.labels[c.key])) for n, c in zip(self._natural, self.columns)]
        self._relayout()

    # --- layout ----------------------------------------------------------------------------

    def _relayout(self) -> None:
        """Shown columns and their widths for the current width; drops cached lines."""
        if not self._natural:
            self._natural = [cell_len(c.label) for c in self.columns]
        # The width left once the vertical scrollbar is there: no horizontal scrollbar, ever (CSS hides it).
        bar = self.styles.scrollbar_size_vertical if len(self.rows) + 1 > self.size.height else 0
        avail = max(self.size.width - bar, 20)
        cols, natural = self.columns, self._natural
        shown = list(range(len(cols)))
        widths = {i: natural[i] for i in shown}
        need = lambda: sum(widths[i] + 1 for i in shown) + 1  # noqa: E731  (one space between and around)
        if need() > avail:  # 1. long cells cut to their soft width
            widths.update({i: min(widths[i], cols[i].soft_width) for i in shown if cols[i].shrink})
        for i in sorted((i for i in shown if cols[i].drop), key=lambda i: -cols[i].drop):  # 2. columns dropped
            if need() <= avail:
                break
            shown.remove(i)
        while need() > avail:  # 3. the widest cuttable column cut, one cell at a time
            cands = [i for i in shown if cols[i].shrink and widths[i] > cols[i].min_width]
            if not cands:
                break
            widths[max(cands, key=lambda i: widths[i])] -= 1
        while need() < avail:  # 4. room left: give it back to the column cut most
            cands = [i for i in shown if widths[i] < natural[i]]
            if not cands:
                break
            widths[max(cands, key=lambda i: natural[i] - widths[i])] += 1
        self._layout = [(i, widths[i]) for i in shown]
        self._lines.clear()
        self.virtual_size = Size(max(need(), avail), len(self.rows) + 1)
        self.refresh()

    def on_resize(self) -> None:
        self._relayout()
        self._follow_cursor()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()
        self._styles = None

    def _on_focus(self, event: events.Focus) -> None:
        self.notify_style_update()
        self.refresh()

    def _on_blur(self, event: events.Blur) -> None:
        self.notify_style_update()
        self.refresh()

    # --- drawing ---------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        index = -1 if y == 0 else scroll_y + y - 1
        cursor = index == self.cursor_row
        key = (index, cursor)
        strip = self._lines.get(key)
        if strip is None:
            strip = self._lines[key] = self._strip(index, cursor)
        if scroll_x == 0 and strip.cell_length == width:
            return strip
        return strip.crop_extend(scroll_x, scroll_x + width, self._palette()[0])

    def _palette(self) -> tuple[Style, Style, Style, Style]:
        """(base, header, even row, cursor) styles: computed once per style change, not per line."""
        if self._styles is None:
            base, get = self.rich_style, self.get_component_rich_style
            self._styles = (base, base + get("run-table--header"), base + get("run-table--even-row"),
                            get("run-table--cursor"))  # fmt: skip
        return self._styles

    def _strip(self, index: int, cursor: bool) -> Strip:
        base, header, even, cursor_style = self._palette()
        total = self.virtual_size.width
        if index == -1:
            row_style = header
            cells: list[Cell] = [self.labels[c.key] for c in self.columns]
        elif index >= len(self.rows):
            return Strip.blank(total, base)
        else:
            row_style = even if index % 2 == 0 else base
            cells = self.rows[index]
        top = cursor_style if cursor else None
        plain = row_style + top if top else row_style
        parse = Style.parse
        segments = [Segment(" ", plain)]
        used = 1
        for col, width in self._layout:
            for text, style in _fragments(cells[col], width, self.columns[col].right):
                if text:
                    s = row_style + parse(style) if style else row_style
                    segments.append(Segment(text, s + top if top else s))
            segments.append(Segment(" ", plain))
            used += width + 1
        if used < total:
            segments.append(Segment(" " * (total - used), plain))
        return Strip(segments, max(used, total))

    def _drop_row(self, index: int) -> None:
        for key in [k for k in self._lines if k[0] == index]:
            del self._lines[key]
        self.refresh_line(index + 1)  # virtual line: the header is line 0

    # --- cursor ----------------------------------------------------------------------------

    def move_cursor(self, row: int) -> None:
        if not self.rows:
            return
        old, self.cursor_row = self.cursor_row, min(max(row, 0), len(self.rows) - 1)
        if old != self.cursor_row:
            self._drop_row(old)
            self._drop_row(self.cursor_row)
        self._follow_cursor()

    def _follow_cursor(self) -> None:
        visible = max(self.scrollable_content_region.height - 1, 1)
        top = int(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False, immediate=True)

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self.cursor_row + int(step))

    def action_page(self, step: int) -> None:
        self.move_cursor(self.cursor_row + int(step) * max(self.scrollable_content_region.height - 2, 1))

    def action_cursor_to(self, row: int) -> None:
        self.move_cursor(len(self.rows) - 1 if int(row) < 0 else int(row))

    def action_select(self) -> None:
        if self.cursor_key is not None:
            self.post_message(self.RowSelected(self, self.cursor_key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:  # the header: which column
            x, left = offset.x + int(self.scroll_offset.x), 1
            for col, width in self._layout:
                if left <= x < left + width + 1:
                    self.post_message(self.HeaderSelected(self, self.columns[col].key))
                    return
                left += width + 1
            return
        row = int(self.scroll_offset.y) + offset.y - 1
        if 0 <= row < len(self.rows):
            if row == self.cursor_row:  # a second click on the same row opens it
                self.action_select()
            self.move_cursor(row)
