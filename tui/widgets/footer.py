"""The key bindings in one line, drawn as text by a single widget.

Textual's Footer mounts a widget per key and rebuilds them all whenever focus or bindings change
(25-45 ms each time here, most of the time it took to open a screen). This one keeps the list of
shown bindings, redraws only when it changed, and maps a click to its key. It looks the same: keys
in the footer's key colours, then their descriptions, the command palette key on the right.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.segment import Segment
from textual import events
from textual.strip import Strip
from textual.widget import Widget


@dataclass(frozen=True)
class Item:
    key: str  # what simulate_key presses
    display: str
    description: str
    enabled: bool
    tooltip: str


class Footer(Widget):
    ALLOW_SELECT = False
    DEFAULT_CSS = """
    Footer {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        & > .footer--item { background: $footer-item-background; }
        & > .footer--key { color: $footer-key-foreground; background: $footer-key-background; text-style: bold; }
        & > .footer--description { color: $footer-description-foreground; background: $footer-description-background; }
        & > .footer--disabled { text-style: dim; }
        & > .footer--hover { background: $block-hover-background; }
        & > .footer--border { color: $foreground 20%; }
    }
    """
    COMPONENT_CLASSES = {"footer--item", "footer--key", "footer--description", "footer--disabled", "footer--hover",
                         "footer--border"}  # fmt: skip

    def __init__(self, *, show_command_palette: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.show_command_palette = show_command_palette
        self.items: tuple[Item, ...] = ()
        self.palette: Item | None = None
        self._spans: list[tuple[int, int, Item]] = []  # x range of each drawn item, for clicks
        self._hover: Item | None = None
        self._pending = False

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.bindings_changed(self.screen)

    def bindings_changed(self, screen) -> None:
        if not self.is_attached or screen is not self.screen or self._pending:
            return
        self._pending = True  # bursts of changes (focus, stack, refresh_bindings): read them once
        self.call_after_refresh(self._read)

    def _read(self) -> None:
        self._pending = False
        if not self.is_attached:
            return
        app = self.app
        palette_key = app.COMMAND_PALETTE_BINDING
        items, palette, seen = [], None, set()
        for key, (_, binding, enabled, tooltip) in self.screen.active_bindings.items():
            item = Item(binding.key, app.get_key_display(binding), binding.description, enabled,
                        tooltip or binding.tooltip or binding.description)  # fmt: skip
            if key == palette_key and self.show_command_palette and app.ENABLE_COMMAND_PALETTE:
                palette = item
            elif binding.show and binding.action not in seen:  # one key per action, as Textual's footer
                seen.add(binding.action)
                items.append(item)
        if (tuple(items), palette) != (self.items, self.palette):
            self.items, self.palette = tuple(items), palette
            self.refresh()

    # --- drawing ---------------------------------------------------------------------------

    def _item(self, item: Item, pad_key: bool = True) -> list[Segment]:
        style = self.get_component_rich_style
        base = self.rich_style + style("footer--item")
        if item is self._hover:
            base += style("footer--hover")
        key_style, desc_style = base + style("footer--key"), base + style("footer--description")
        if not item.enabled:
            key_style, desc_style = key_style + style("footer--disabled"), desc_style + style("footer--disabled")
        key = f" {item.display} " if pad_key else item.display
        if not item.description:
            return [Segment(key, key_style)]
        return [Segment(key, key_style), Segment((" " if not pad_key else "") + item.description + " ", desc_style)]

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        right: list[Segment] = []
        if self.palette is not None:
            right = [Segment("▏", base + self.get_component_rich_style("footer--border")),
                     *self._item(self.palette, pad_key=False), Segment(" ", base)]  # fmt: skip
        room = width - sum(cell_len(s.text) for s in right)
        segments: list[Segment] = []
        spans: list[tuple[int, int, Item]] = []
        x = 0
        for item in self.items:  # whole keys only: the ones that do not fit are left out
            parts = self._item(item)
            w = sum(cell_len(s.text) for s in parts)
            if x + w > room:
                break
            segments += parts
            spans.append((x, x + w, item))
            x += w
        if x < room:
            segments.append(Segment(" " * (room - x), base))
        if right:
            spans.append((room, width, self.palette))  # type: ignore[arg-type]
        self._spans = spans
        return Strip(segments + right).crop_extend(0, width, base)

    # --- mouse -----------------------------------------------------------------------------

    def _at(self, x: int) -> Item | None:
        return next((item for start, end, item in self._spans if start <= x < end), None)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        item = self._at(event.x)
        if item is not self._hover:
            self._hover = item
            self.tooltip = item.tooltip if item else None
            self.refresh()

    def on_leave(self, event: events.Leave) -> None:
        if self._hover is not None:
            self._hover = None
            self.refresh()

    def on_click(self, event: events.Click) -> None:
        item = self._at(event.x)
        if item is None:
            return
        if item.enabled:
            self.app.simulate_key(item.key.split(",")[0])
        else:
            self.app.bell()
