"""A plot widget that owns its plotext figure (no module-global figure) and redraws at its own size."""

from __future__ import annotations

from typing import Any, Callable

from rich.text import Text
from textual.widget import Widget

Builder = Callable[[int, int], Text | None]


class Plot(Widget):
    """Draws `builder(width, height)`; a new builder or a resize redraws it."""

    DEFAULT_CSS = "Plot { height: 1fr; min-height: 8; }"

    def __init__(self, builder: Builder | None = None, empty: str = "nothing to plot yet", **kw: Any):
        super().__init__(**kw)
        self.builder = builder
        self.empty = empty
        self._cache: tuple[tuple[int, int, int], Text] | None = None

    def set_builder(self, builder: Builder | None) -> None:
        self.builder = builder
        self._cache = None
        self.refresh()

    def render(self) -> Text:
        w, h = self.size.width, self.size.height
        if self.builder is None or w < 20 or h < 6:
            return Text(self.empty, style="dim")
        key = (w, h, id(self.builder))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.builder(w, h) or Text(self.empty, style="dim"))
        return self._cache[1]
