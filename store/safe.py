"""Stored text made safe to show: control characters made visible, length capped with "…".

Names, labels, model paths, errors, notes, flags' reasons and host fields are stored whole, whatever they
hold. A terminal obeys the escape sequences in them (clear the screen, retitle the window, a hyperlink),
so every view passes them through `shown`. Markup is the views' business: they hand data to Rich and
Textual as Text, never as a markup string. Plain Python: the store and the headless CLI import it.
"""

from __future__ import annotations

import re

NAME = 48  # a run name, label, model, host or id: one table cell, one title
LINE = 240  # one line of an error, a note or a flag's reason
LOG = 1000  # one line of a worker's log

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0, DEL, C1, lone surrogates (unprintable)
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")  # the same, newline and tab kept
_NAMED = {"\x1b": "␛", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _visible(ch: str) -> str:
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def shown(text: object, limit: int | None = None, *, lines: bool = False) -> str:
    """`text` as it may be shown: every control character as visible text (ESC as ␛, others as \\xNN;
    newline and tab kept only with `lines`), at most `limit` characters, the last one "…" when cut.
    Idempotent: what it returns comes back unchanged."""
    s = text if isinstance(text, str) else str(text)
    pattern = _CONTROL_BUT_LINES if lines else _CONTROL
    if limit is not None and len(s) > limit:
        s = s[: limit + 1]  # a replacement only lengthens: the rest cannot be shown anyway
    if pattern.search(s):
        s = pattern.sub(lambda m: _visible(m.group()), s)
    if limit is not None and len(s) > limit:
        s = s[: max(limit - 1, 0)] + "…"
    return s


def first_line(text: object, limit: int = LINE) -> str:
    """The first non-empty line of an error or a note, shown."""
    s = text if isinstance(text, str) else str(text)
    line = next((part for part in s[: limit * 4].splitlines() if part.strip()), "")
    return shown(line, limit)
