"""Text bars and gauges: one-line widgets that draw from plain attributes (no timers, no threads)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


def bar(fraction: float, width: int, style: str = "green", back: str = "grey23") -> Text:
    """A bar `width` cells wide; whole cells only, so it reads the same in every font."""
    width = max(width, 1)
    full = int(round(min(max(fraction, 0.0), 1.0) * width))
    text = Text("█" * full, style=style)
    text.append(" " * (width - full), style=f"on {back}")
    return text


def gib(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.1f}G" if n >= 2**30 else f"{n / 2**20:.0f}M"


class Gauge(Widget):
    """`label [bar] value`: the bar takes whatever width is left."""

    DEFAULT_CSS = "Gauge { height: 1; }"
    label: reactive[str] = reactive("", layout=False)
    value: reactive[float | None] = reactive(None)
    maximum: reactive[float] = reactive(1.0)
    text: reactive[str] = reactive("")

    def __init__(self, label: str, *, label_width: int = 5, style: str = "green", **kw):
        super().__init__(**kw)
        self.label = label
        self.label_width = label_width
        self.style = style

    def set(self, value: float | None, maximum: float, text: str) -> None:
        self.value, self.maximum, self.text = value, maximum or 1.0, text

    def render(self) -> Text:
        width = self.size.width
        text_w = max(len(self.text), 1)
        bar_w = max(width - self.label_width - text_w - 2, 3)
        out = Text(self.label[: self.label_width].ljust(self.label_width), style="bold")
        frac = (self.value or 0.0) / self.maximum if self.value is not None else 0.0
        style = "red" if frac > 0.9 else "yellow" if frac > 0.75 else self.style
        out.append(" ")
        out.append_text(bar(frac, bar_w, style))
        out.append(" ")
        out.append(self.text)
        return out
