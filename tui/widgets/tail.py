"""A log that follows its newest line: appending redraws the visible lines and nothing else.

RichLog grows its virtual size on every write, and each growth is a relayout of the whole screen
(20 ms and more here, with every scrollbar redrawn). This widget keeps its own scroll position,
counted in display rows back from the end, so its size never changes; the keys and the mouse wheel
scroll it, and a marker on the last row says how far back the view is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Union

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.strip import Strip
from textual.widget import Widget

Line = Union[Text, str]


class TailLog(Widget, can_focus=True):
    DEFAULT_CSS = "TailLog { height: 1fr; }"
    BINDINGS = [
        Binding("up", "scroll_rows(1)", "Up", show=False),
        Binding("down", "scroll_rows(-1)", "Down", show=False),
        Binding("pageup", "scroll_page(1)", "Page up", show=False),
        Binding("pagedown", "scroll_page(-1)", "Page down", show=False),
        Binding("home", "scroll_home", "Oldest", show=False),
        Binding("end", "scroll_to_end", "Newest", show=False),
    ]

    def __init__(self, *, max_lines: int = 10_000, wrap: bool = False, cut_at_space: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.max_lines = max_lines
        self.wrap = wrap
        self.cut_at_space = cut_at_space  # unwrapped lines too long are cut at a space, not mid-word
        self.lines: list[Line] = []
        self.back = 0  # display rows between the bottom of the view and the newest row; 0 follows the end
        self._dropped = 0  # lines ever dropped from the front: cache keys stay valid as the list shifts
        self._rows: OrderedDict[tuple[int, int], list[Strip]] = OrderedDict()  # (line number, width) -> rows
        self._view: list[Strip] | None = None

    # --- content ---------------------------------------------------------------------------

    def write(self, line: Line) -> None:
        self.lines.append(line)
        if len(self.lines) > self.max_lines:
            cut = len(self.lines) - self.max_lines
            del self.lines[:cut]
            self._dropped += cut
        if self.back:  # scrolled back: keep the same rows in view
            self.back += len(self._line_rows(len(self.lines) - 1, self._width()))
        self._changed()

    def clear(self) -> None:
        self.lines.clear()
        self._rows.clear()
        self.back = 0
        self._changed()

    def _changed(self) -> None:
        self._view = None
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._rows.clear()
        self._view = None

    def on_resize(self) -> None:
        self._view = None

    # --- drawing ---------------------------------------------------------------------------

    def _width(self) -> int:
        return max(self.size.width, 1)

    def _line_rows(self, index: int, width: int) -> list[Strip]:
        """Display rows of line `index` at `width` (one without wrap), cached for the lines in view."""
        key = (index + self._dropped, width)
        rows = self._rows.get(key)
        if rows is not None:
            self._rows.move_to_end(key)
            return rows
        line = self.lines[index]
        text = line if isinstance(line, Text) else Text(line)
        console = self.app.console
        base = self.rich_style
        if self.wrap:
            options = console.options.update_width(width)
            rows = [Strip(Segment.apply_style(segs, base), width)
                    for segs in console.render_lines(text, options, pad=True, new_lines=False)]  # fmt: skip
        else:
            if self.cut_at_space and text.cell_len > width:  # a table row: leave out the column that does not fit
                cut = text.plain.rfind(" ", 0, width + 1)
                if cut > width // 2:
                    text = text[:cut]
            segs = list(Segment.apply_style(text.render(console), base))
            rows = [Strip(Segment.adjust_line_length(segs, width, style=base), width)]
        self._rows[key] = rows
        while len(self._rows) > 400:
            self._rows.popitem(last=False)
        return rows

    def _build_view(self, width: int, height: int) -> list[Strip]:
        """The `height` rows ending `back` rows before the newest."""
        if self.wrap:  # rows per line vary: walk back from the end
            rows: list[Strip] = []
            index = len(self.lines) - 1
            while index >= 0 and len(rows) < height + self.back:
                rows[:0] = self._line_rows(index, width)
                index -= 1
            self.back = max(min(self.back, len(rows) - height), 0)
            view = rows[max(len(rows) - height - self.back, 0) : len(rows) - self.back]
        else:  # a row per line
            self.back = max(min(self.back, len(self.lines) - height), 0)
            end = len(self.lines) - self.back
            view = [self._line_rows(i, width)[0] for i in range(max(end - height, 0), end)]
        if self.back and view:
            mark = Strip([Segment(f" ↓{self.back} ", self.rich_style + Style(reverse=True))])
            last = view[-1].crop(0, max(width - mark.cell_length, 0))
            view[-1] = Strip.join([last, mark])
        return view

    def render_line(self, y: int) -> Strip:
        width, height = self._width(), self.size.height
        if self._view is None:
            self._view = self._build_view(width, height)
        return self._view[y] if y < len(self._view) else Strip.blank(width, self.rich_style)

    # --- scrolling -------------------------------------------------------------------------

    def _scroll(self, rows: int) -> None:
        back = max(self.back + rows, 0)
        if back != self.back:
            self.back = back
            self._changed()

    def action_scroll_rows(self, rows: int) -> None:
        self._scroll(int(rows))

    def action_scroll_page(self, pages: int) -> None:
        self._scroll(int(pages) * max(self.size.height - 1, 1))

    def action_scroll_home(self) -> None:
        self._scroll(self.max_lines * (8 if self.wrap else 1))  # clamped to the oldest row when drawn

    def action_scroll_to_end(self) -> None:
        self._scroll(-self.back)

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self._scroll(3)

    def _on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self._scroll(-3)
