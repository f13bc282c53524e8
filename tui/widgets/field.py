"""A text field that shows control characters as visible symbols, one for one.

Input draws its value as is: a stored name, a recent model or a study file's field put in it (or pasted)
would send its escape sequences to the terminal. Here each control character is drawn as one visible
symbol (␛, ␀, ␡, � for C1), so the cursor still lines up, and the value itself is left as it is.
"""

from __future__ import annotations

from typing import Any

from rich.highlighter import Highlighter
from rich.text import Text
from textual.widgets import Input

PICTURES = {**{c: 0x2400 + c for c in range(0x20)}, 0x7F: 0x2421, **{c: 0xFFFD for c in range(0x80, 0xA0)}}


class ControlPictures(Highlighter):
    def highlight(self, text: Text) -> None:
        plain = text.plain
        visible = plain.translate(PICTURES)
        if visible != plain:
            text.plain = visible  # same length: styles and the cursor keep their places


class Field(Input):
    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("highlighter", ControlPictures())
        super().__init__(*args, **kw)
