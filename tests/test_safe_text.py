"""store.safe.shown over arbitrary text (hypothesis)."""

from __future__ import annotations

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
