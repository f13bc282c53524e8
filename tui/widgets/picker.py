"""One option axis as a row of toggles: `precision  ● fp32  ○ bf16  × fp16`, wrapped to the width.

Values that cannot run with what the other axes have picked are shown struck through and cannot be
ticked. Keys: left/right move, space or enter toggles; a click toggles the value under the mouse.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.segment import Segment
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

LABEL_W = 10
MARK = {True: "● ", False: "○ "}
OFF = "× "


class AxisPicker(Widget, can_focus=True):
    DEFAULT_CSS = """
    AxisPicker {
        height: auto;
        & > .picker--label { color: $text-muted; }
        & > .picker--on { color: $success; text-style: bold; }
        & > .picker--disabled { color: $text-disabled; text-style: strike; }
        & > .picker--cursor { background: $block-cursor-blurred-background; }
        &:focus > .picker--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
        }
    }
    """
    COMPONENT_CLASSES = {"picker--label", "picker--on", "picker--disabled", "picker--cursor"}
    BINDINGS = [
        Binding("left", "move(-1)", "Previous", show=False),
        Binding("right", "move(1)", "Next", show=False),
        Binding("space,enter", "toggle", "Toggle", show=False),
    ]

    class Changed(Message):
        def __init__(self, picker: AxisPicker) -> None:
            super().__init__()
            self.picker = picker

        @property
        def control(self) -> AxisPicker:
            return self.picker

    def __init__(self, axis: str, values: list[tuple[str, bool, str]], selected: list[str], *,
                 label: str | None = None, **kw) -> None:  # fmt: skip
        super().__init__(**kw)
        self.axis = axis
        self.label = label if label is not None else axis
        self.values = values  # (value, can run, why not)
        self.selected = [v for v, _, _ in values if v in selected]
        self.cursor = 0
        self._lines: tuple[int, list[list[tuple[int, int]]]] | None = None  # width -> rows of (value index, x)

    def set_values(self, values: list[tuple[str, bool, str]]) -> None:
        """New offers (the other axes changed); picks stay as they are, even where they cannot run now."""
        if values != self.values:
            resize = [v for v, _, _ in values] != [v for v, _, _ in self.values]
            self.values = values
            self._lines = None
            self.refresh(layout=resize)

    # --- layout ----------------------------------------------------------------------------

    def _chip(self, i: int) -> str:
        value, ok, _ = self.values[i]
        return (MARK[value in self.selected] if ok or value in self.selected else OFF) + value

    def _layout(self, width: int) -> list[list[tuple[int, int]]]:
        if self._lines is None or self._lines[0] != width:
            rows: list[list[tuple[int, int]]] = [[]]
            x = LABEL_W
            for i in range(len(self.values)):
                w = cell_len(self._chip(i))
                if rows[-1] and x + w > width:
                    rows.append([])
                    x = LABEL_W
                rows[-1].append((i, x))
                x += w + 2
            self._lines = (width, rows)
        return self._lines[1]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(len(self._layout(max(width, LABEL_W + 4))), 1)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        rows = self._layout(max(width, LABEL_W + 4))
        base = self.rich_style
        if y >= len(rows):
            return Strip.blank(width, base)
        style = self.get_component_rich_style
        segments = [Segment((self.label if y == 0 else "").ljust(LABEL_W)[:LABEL_W], base + style("picker--label"))]
        x = LABEL_W
        for i, at in rows[y]:
            value, ok, _ = self.values[i]
            if at > x:
                segments.append(Segment(" " * (at - x), base))
            s = base
            if value in self.selected:
                s += style("picker--on")
            if not ok:
                s += style("picker--disabled")
            if i == self.cursor and self.has_focus:
                s += style("picker--cursor")
            chip = self._chip(i)
            segments.append(Segment(chip, s))
            x = at + cell_len(chip)
        return Strip(segments).extend_cell_length(width, base)

    def _on_focus(self, event: events.Focus) -> None:
        self.refresh()

    def _on_blur(self, event: events.Blur) -> None:
        self.refresh()

    # --- picking ---------------------------------------------------------------------------

    def action_move(self, step: int) -> None:
        if self.values:
            self.cursor = (self.cursor + int(step)) % len(self.values)
            self.refresh()

    def action_toggle(self) -> None:
        if not self.values:
            return
        value, ok, reason = self.values[self.cursor]
        if value in self.selected:
            self.selected.remove(value)
        elif ok:
            self.selected.append(value)
            order = [v for v, _, _ in self.values]
            self.selected.sort(key=order.index)
        else:
            self.notify(f"{self.axis} {value}: {reason or 'cannot run with what is picked'}", severity="warning")
            return
        self.refresh()
        self.post_message(self.Changed(self))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        rows = self._layout(max(self.size.width, LABEL_W + 4))
        if offset.y < len(rows):
            for i, at in rows[offset.y]:
                if at <= offset.x < at + cell_len(self._chip(i)):
                    self.cursor = i
                    self.action_toggle()
                    return
