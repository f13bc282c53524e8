"""The `fim` workload: fill-in-the-middle prompts cut from the stdlib corpus, in the model's own FIM format.

A prompt hides one whole source line (the middle) between the code before it (the prefix) and after it (the
suffix), laid out as the model was trained: prefix-suffix-middle with the family's special tokens, read from the
tokenizer. Prompts are exactly `length` tokens; a model answers with the middle and an end token. Scores are exact
match and edit similarity of the middle (engines/quality/workload_scores.py). No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from engines.base import SpecError
from engines.models.workloads import corpus, load_tokenizer, round_trips


@dataclass(frozen=True)
class FimFormat:
    """A family's FIM tokens, each with the spellings its tokenizers use; ends stop a middle."""

    family: str
    prefix: tuple[str, ...]
    suffix: tuple[str, ...]
    middle: tuple[str, ...]
    ends: tuple[str, ...]


# Prompt order is prefix, suffix, middle for all four (DeepSeek names them begin, hole, end).
FORMATS = (
    FimFormat("starcoder", ("<fim_prefix>",), ("<fim_suffix>",), ("<fim_middle>",),
              ("<|endoftext|>", "<fim_pad>", "<file_sep>")),
    FimFormat("qwen2.5-coder", ("<|fim_prefix|>",), ("<|fim_suffix|>",), ("<|fim_middle|>",),
              ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>")),
    FimFormat("codellama", ("▁<PRE>", "<PRE>"), ("▁<SUF>", "<SUF>"), ("▁<MID>", "<MID>"),
              ("▁<EOT>", "<EOT>", "</s>")),
    FimFormat("deepseek-coder", ("<｜fim▁begin｜>",), ("<｜fim▁hole｜>",), ("<｜fim▁end｜>",),
              ("<|EOT|>", "<｜end▁of▁sentence｜>")),
)  # fmt: skip
MIN_LENGTH = 8  # three FIM tokens and a few of code on each side
PREFIX_SHARE = 0.75  # of the code tokens: most context comes before the hole, as in FIM training
_DRAWS = 1000  # lines drawn per prompt before giving up


@dataclass(frozen=True)
class FimTokens:
    family: str
    prefix: int
    suffix: int
    middle: int
    stops: frozenset[int]  # the family's end tokens and the FIM tokens: a middle ends at the first


def _first_id(tok: Tokenizer, spellings: tuple[str, ...]) -> int | None:
    return next((i for s in spellings if (i := tok.token_to_id(s)) is not None), None)


def fim_tokens(tok: Tokenizer) -> FimTokens:
    """The tokenizer's FIM format, or a one-line SpecError when it has none."""
    for fmt in FORMATS:
        ids = [_first_id(tok, s) for s in (fmt.prefix, fmt.suffix, fmt.middle)]
        if None not in ids:
            ends = {i for s in fmt.ends if (i := tok.token_to_id(s)) is not None}
            p, s, m = ids  # type: ignore[misc]
            return FimTokens(fmt.family, p, s, m, frozenset({p, s, m, *ends}))
    raise SpecError("the model's tokenizer has no fill-in-the-middle tokens (StarCoder <fim_prefix>, CodeLlama <PRE>, "
                    "Qwen <|fim_prefix|>, DeepSeek <｜fim▁begin｜>); --workload fim needs a FIM-trained code model, "
                    "e.g. tiny or a StarCoder2 directory")  # fmt: skip


def check_fim_model(model: str) -> None:
    """Parent-side: a model whose tokenizer is here (tiny, a preset, a directory) must have FIM tokens."""
    from engines.models.refs import tokenizer_file
    from engines.models.tiny import TINY_TOKENIZER

    path = Path(str(TINY_TOKENIZER)) if model == "tiny" else tokenizer_file(model)
    if path is not None:
        fim_tokens(load_tokenizer(path))


@dataclass(frozen=True)
class FimExample:
    ids: tuple[int, ...]  # the whole prompt: FIM tokens, prefix and suffix ids
    prefix: str  # the code before the hole, as its ids decode
    middle: str  # the hidden line, newline included
    suffix: str
    start: int  # where the prefix starts in the corpus text: corpus().text[start:] begins with prefix+middle+suffix


def _line_at(text: str, offset: int) -> tuple[int, int]:
    """The line holding `offset`: (start, end after its newline)."""
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    return start, (len(text) if end < 0 else end + 1)


def _encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def _example(tok: Tokenizer, fim: FimTokens, text: str, offset: int, length: int) -> FimExample | None:
    m0, m1 = _line_at(text, offset)
    middle = text[m0:m1]
    if not 8 <= len(middle.strip()) <= 160:  # a line of code, not a blank or a wall of data
        return None
    code = length - 3
    n_pre = max(1, round(code * PREFIX_SHARE))
    n_suf = code - n_pre
    window = 6 * max(n_pre, n_suf) + 256  # stdlib source runs ~3.5 chars a token
    if m0 < window or m1 + window > len(text):
        return None
    # The window's far end may split a word the full text would merge: keep tokens away from it.
    pre = _encode(tok, text[m0 - window : m0])
    suf = _encode(tok, text[m1 : m1 + window])
    if len(pre) < n_pre + 8 or len(suf) < n_suf + 8:
        return None
    pre, suf = pre[len(pre) - n_pre :], suf[:n_suf]
    prefix = tok.decode(pre, skip_special_tokens=False)
    suffix = tok.decode(suf, skip_special_tokens=False)
    # The pieces must be the source itself (no split character) and what text-in engines would encode again.
    if text[m0 - len(prefix) : m0] != prefix or text[m1 : m1 + len(suffix)] != suffix:
        return None
    ids = [fim.prefix, *pre, fim.suffix, *suf, fim.middle]
    if not round_trips(tok, ids):
        return None
    return FimExample(tuple(ids), prefix, middle, suffix, m0 - len(prefix))


@lru_cache(maxsize=64)
def _examples(tokenizer_file: str, mtime_ns: int, batch: int, length: int, seed: int) -> tuple[FimExample, ...]:
    tok = load_tokenizer(Path(tokenizer_file))
    fim = fim_tokens(tok)
    if length < MIN_LENGTH:
        raise SpecError(f"fim prompts need --input-len >= {MIN_LENGTH} (three FIM tokens and code), got {length}")
    text = corpus().text
    rng = np.random.default_rng(seed)
    found: list[FimExample] = []
    seen: set[int] = set()
    for _ in range(_DRAWS * batch):
        ex = _example(tok, fim, text, int(rng.integers(0, len(text))), length)
        if ex is not None and ex.start not in seen:
            seen.add(ex.start)
            found.append(ex)
            if len(found) == batch:
                return tuple(found)
    raise SpecError(f"cannot cut {batch} fim prompts of {length} tokens from the stdlib corpus; "
                    "use a smaller --input-len or batch")  # fmt: skip


def fim_examples(tokenizer_file: Path | str, batch: int, length: int, seed: int) -> list[FimExample]:
    """`batch` FIM prompts of exactly `length` tokens, fixed by `seed` (the same for every engine)."""
    p = Path(tokenizer_file)
    return list(_examples(str(p), p.stat().st_mtime_ns if p.exists() else 0, batch, length, seed))


def fim_prompts(tokenizer_file: Path | str, batch: int, length: int, seed: int) -> list[list[int]]:
    return [list(e.ids) for e in fim_examples(tokenizer_file, batch, length, seed)]
