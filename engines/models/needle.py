"""The `needle` workload: a haystack of stdlib source with one planted fact, and a question about it at the end.

The fact is a Python line, `CODEBENCH_NEEDLE_VALUE = 48213` (the number seeded per prompt), planted at a line
start at the cell's depth: the share of the haystack's tokens before it (0 % at the top, 100 % just before the
question). The question asks for the value and ends with `CODEBENCH_NEEDLE_VALUE =`, so a model that found the
fact continues with the number. Prompts are exactly the cell's context length. No torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from engines.base import SpecError
from engines.models.workloads import corpus, load_tokenizer, round_trips

KEY = "CODEBENCH_NEEDLE_VALUE"
QUESTION = f"\n\n# Question: what is the value of {KEY}, defined above?\n# Answer: {KEY} ="
_LINE_END = re.compile(r"\n[ \t]*\Z")  # a token that ends a line (and perhaps the next one's indentation)
_SHIFT = 256  # how far the haystack's start may move to put a line start at the depth
_DRAWS = 200  # haystack offsets tried per prompt before giving up


@dataclass(frozen=True)
class NeedleExample:
    ids: tuple[int, ...]
    value: int  # the planted number
    needle_at: int  # index of the needle's first token in ids (= haystack tokens before it)
    haystack: int  # haystack tokens (the prompt less the needle and the question)

    @property
    def depth(self) -> float:
        """Where the needle sits, as a percentage of the haystack's tokens."""
        return 100.0 * self.needle_at / self.haystack if self.haystack else 0.0


def _needle_text(before: str, after: str, value: int) -> str:
    """The fact as a line of code indented like the line it is put before: `before` ends a line, `after` starts
    the next one's remaining indentation (byte-level BPE keeps a word's leading space)."""
    indent = before[before.rfind("\n") + 1 :]
    lead = after[: len(after) - len(after.lstrip(" "))]
    return f"{lead}{KEY} = {value}\n{indent}"


def _plant(tok: Tokenizer, hay: list[int], pieces: list[str], question: list[int], length: int, depth: int,
           value: int) -> NeedleExample | None:  # fmt: skip
    """Slide the haystack's start so that a line start lands at `depth` % of its tokens."""
    for b in range(1, len(hay)):
        if not _LINE_END.search(pieces[b - 1]) or pieces[b].startswith(("\n", "\t")):
            continue
        needle = tok.encode(_needle_text(pieces[b - 1], pieces[b], value), add_special_tokens=False).ids
        haystack = length - len(question) - len(needle)
        if haystack < 1:
            return None
        before = round(depth / 100 * haystack)
        start = b - before
        if start < 0:
            continue
        if start > _SHIFT or start + haystack > len(hay):
            return None
        ids = hay[start:b] + needle + hay[b : start + haystack] + question
        if len(ids) == length and round_trips(tok, ids):
            return NeedleExample(tuple(ids), value, before, haystack)
    return None


@lru_cache(maxsize=64)
def _examples(tokenizer_file: str, mtime_ns: int, batch: int, length: int, depth: int,
              seed: int) -> tuple[NeedleExample, ...]:  # fmt: skip
    if not 0 <= depth <= 100:
        raise SpecError(f"needle depth is a percentage from 0 to 100, got {depth}; e.g. --depth 0:101:25")
    tok = load_tokenizer(Path(tokenizer_file))
    question = tok.encode(QUESTION, add_special_tokens=False).ids
    if length < len(question) + 32:
        raise SpecError(f"needle prompts need --context >= {len(question) + 32} (the question alone is "
                        f"{len(question)} tokens), got {length}")  # fmt: skip
    text = corpus().text
    rng = np.random.default_rng(seed)  # not keyed by depth: every depth of a context draws the same haystacks
    found: list[NeedleExample] = []
    for _ in range(_DRAWS * batch):
        offset, value = int(rng.integers(0, len(text))), int(rng.integers(10_000, 100_000))
        start = text.find("\n", offset) + 1
        window = 5 * (length + _SHIFT) + 1024  # stdlib source runs ~3.5 chars a token
        hay = tok.encode(text[start : start + window], add_special_tokens=False).ids[:-8]  # the cut end may split
        if len(hay) < length + _SHIFT:
            continue
        pieces = tok.decode_batch([[i] for i in hay], skip_special_tokens=False)
        ex = _plant(tok, hay, pieces, question, length, depth, value)
        if ex is not None and all(ex.value != f.value for f in found):
            found.append(ex)
            if len(found) == batch:
                return tuple(found)
    raise SpecError(f"cannot cut {batch} needle prompts of {length} tokens at depth {depth}% from the stdlib "
                    "corpus; use a smaller --context or batch")  # fmt: skip


def needle_examples(tokenizer_file: Path | str, batch: int, length: int, depth: int, seed: int) -> list[NeedleExample]:
    """`batch` prompts of exactly `length` tokens with the fact at `depth` %, fixed by `seed`."""
    p = Path(tokenizer_file)
    return list(_examples(str(p), p.stat().st_mtime_ns if p.exists() else 0, batch, length, depth, seed))


def needle_prompts(tokenizer_file: Path | str, batch: int, length: int, depth: int, seed: int) -> list[list[int]]:
    return [list(e.ids) for e in needle_examples(tokenizer_file, batch, length, depth, seed)]
