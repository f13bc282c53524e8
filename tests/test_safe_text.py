"""store.safe.shown and the tables built on it, over arbitrary text (hypothesis)."""

from __future__ import annotations

import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from store.safe import LINE, NAME, first_line, shown

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Text as an import could bring it: any code point, controls, surrogates and markup brackets well represented.
ANY = st.text(st.one_of(st.characters(codec=None, categories=None), st.characters(max_codepoint=0xA0),
                        st.sampled_from("[]/\\@=#$\x1b\x9b\x9d\x07\x00\x7f\n\t\r\ud800")), max_size=300)  # fmt: skip
EXAMPLES = settings(max_examples=400, deadline=None)


def test_examples():
    assert shown("plain name") == "plain name"
    assert shown("\x1b[2J\x1b]0;t\x07") == "␛[2J␛]0;t\\x07"
    assert shown("\x9b2J\x9d\x7f\x00") == "\\x9b2J\\x9d\\x7f\\x00"
    assert shown("a\nb\tc") == "a\\nb\\tc"
    assert shown("a\nb\tc\x1b", lines=True) == "a\nb\tc␛"
    assert shown("x" * 100_000, NAME) == "x" * (NAME - 1) + "…"
    assert shown(None) == "None" and shown(3) == "3"
    assert first_line("\n  \nboom\x1b[2J\nmore") == "boom␛[2J"
    assert first_line("y" * 100_000) == "y" * (LINE - 1) + "…"


@EXAMPLES
@given(ANY, st.one_of(st.none(), st.integers(1, 200)), st.booleans())
def test_shown_has_no_controls_is_bounded_and_idempotent(text, limit, lines):
    out = shown(text, limit, lines=lines)
    left = CONTROL.findall(out)
    assert set(left) <= ({"\n", "\t"} if lines else set()), left
    if limit is not None:
        assert len(out) <= limit
    assert shown(out, limit, lines=lines) == out
    if not CONTROL.search(text) and (limit is None or len(text) <= limit):
        assert out == text  # clean text is left alone


@EXAMPLES
@given(ANY)
def test_palette_text_is_never_markup(text):
    """The command palette parses its titles as Textual markup: they are escaped to show as written."""
    from textual.content import Content

    from tui.app import palette_text

    assert Content.from_markup(palette_text(text)).plain == shown(text, LINE)


def _result(n: int, name: str, label: str, model: str, error: str, note: str):
    from store.results import RunResult

    run = {"id": f"{n:x}" * 32, "name": name, "label": label, "model": model, "device": "cpu", "status": "done",
           "error": error, "notes": [note], "config": {"engine": "e", "options": {label: name}}, "host": {"cpu": note},
           "created_at": 1.0, "cells_total": 2}  # fmt: skip
    cells = [{"batch": b, "input_len": 8, "output_len": 2, "status": "done" if b == 1 else label, "error": error,
              "tokens_per_s": 10.0 * b, "latency_s": 0.1, "repeats": [{"latencies_s": [0.1, 0.11]}] * 3,
              "flags": [{"code": note, "reason": error}], "params": {}} for b in (1, 2)]  # fmt: skip
    return RunResult(run, cells)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(ANY, ANY, ANY, ANY, ANY), min_size=2, max_size=3))
def test_tables_and_their_terminal_rendering(runs):
    """Every table built from hostile runs holds clean, bounded strings; Rich draws them without markup errors
    and writes no control character but its own colours."""
    from rich.console import Console

    from store.tables import cell_table, comparison_table, quality_table
    from tests.tui_support import leaks
    from tui.render import rich_table

    results = [_result(i + 1, *r) for i, r in enumerate(runs)]
    tables = [comparison_table(results), quality_table(results), cell_table(results[0])]
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=160)
    for t in tables:
        for s in [t.title, *t.headers, *(v for row in t.rows for v in row), *t.notes]:
            assert not CONTROL.search(s), repr(s)
            assert len(s) <= 600
        console.print(rich_table(t))
    assert not leaks(console.file.getvalue())
