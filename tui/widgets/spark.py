"""A sparkline drawn line by line from a tuple of floats, redrawn only when the data or its size change.

Looks like Textual's Sparkline (max per bucket, bars blended from the min to the max colour) but does not
go through a Rich renderable with one Style per bar: that was the largest cost of a live-screen frame.
"""

from __future__ import annotations

from typing import Iterable

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

BARS = "▁▂▃▄▅▆▇█"
SHADES = 16  # colour steps between the min and the max colour


class Spark(Widget):
    DEFAULT_CSS = """
    Spark { height: 1; }
    Spark > .spark--max-color { color: $primary; }
    Spark > .spark--min-color { color: $primary 30%; }
    """
    COMPONENT_CLASSES = {"spark--max-color", "spark--min-color"}

    def __init__(self, data: Iterable[float] = (), **kw) -> None:
        super().__init__(**kw)
        self._data: tuple[float, ...] = tuple(data)
        self._strips: tuple[tuple[int, int], list[Strip]] | None = None
        self._shade_list: list[Style] | None = None

    @property
    def data(self) -> tuple[float, ...]:
        return self._data

    @data.setter
    def data(self, values: Iterable[float]) -> None:
        values = tuple(values)
        if values != self._data:
            self._data = values
            self._strips = None
            self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = self._shade_list = None

    def render_line(self, y: int) -> Strip:
        size = (self.size.width, self.size.height)
        if self._strips is None or self._strips[0] != size:
            self._strips = (size, self._build(*size))
        lines = self._strips[1]
        return lines[y] if 0 <= y < len(lines) else Strip.blank(size[0], self.rich_style)

    def _shades(self) -> list[Style]:
        """SHADES + 1 styles from the min to the max colour, kept until the styles change."""
        if self._shade_list is None:
            _, background = self.background_colors
            low = (background + self.get_component_styles("spark--min-color").color).rich_color.triplet
            high = (background + self.get_component_styles("spark--max-color").color).rich_color.triplet
            base = self.rich_style
            if low is None or high is None:
                self._shade_list = [base] * (SHADES + 1)
            else:
                self._shade_list = [base + Style.from_color(_rgb(low, high, k / SHADES)) for k in range(SHADES + 1)]
        return self._shade_list

    def _build(self, width: int, height: int) -> list[Strip]:
        base = self.rich_style
        if width <= 0 or height <= 0:
            return []
        shades = self._shades()
        data = self._data
        if not data:
            return [Strip.blank(width, base)] * (height - 1) + [Strip([Segment("▁" * width, shades[0])], width)]
        # Buckets as Textual's: `width` slices of the data (empty ones skipped), max of each, stretched to fit.
        n = len(data)
        edges = [n * b // width for b in range(width + 1)]
        buckets = [max(data[lo:hi]) for lo, hi in zip(edges, edges[1:]) if lo < hi]
        values = [buckets[k * len(buckets) // width] for k in range(width)]
        low, top = min(data), max(data)
        extent = top - low or 1
        steps = len(BARS) * height - 1
        ratios = [(v - low) / extent for v in values]
        index = [int(r * steps) for r in ratios] if n > 1 else [steps] * width
        shade = [shades[round(r * SHADES)] for r in ratios] if n > 1 else [shades[SHADES]] * width
        lines = []
        for row in reversed(range(height)):
            lo, hi = row * len(BARS), (row + 1) * len(BARS)
            segments: list[Segment] = []
            run, run_style = [], None
            for i, s in zip(index, shade):
                ch, st = (" ", base) if i < lo else ("█", s) if i >= hi else (BARS[i % len(BARS)], s)
                if st is not run_style and run:
                    segments.append(Segment("".join(run), run_style))
                    run = []
                run_style = st
                run.append(ch)
            if run:
                segments.append(Segment("".join(run), run_style))
            lines.append(Strip(segments, width))
        return lines


def _rgb(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> Color:
    return Color.from_rgb(*(x + (y - x) * t for x, y in zip(a, b)))
