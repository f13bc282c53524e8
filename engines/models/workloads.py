"""Workloads: the prompts a sweep feeds to every engine.

`synthetic`: prompts of exactly N tokens cut from real Python source, namely the standard
library of the running interpreter. The corpus is read once per process; a prompt is found by
tokenizing only a window of text around a seeded offset, so long prompts stay cheap. No torch.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from engines.base import SpecError

# Directories that hold tests, third-party code or generated prose rather than library code.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"})
_SLIDES = 64  # token shifts tried at one offset before drawing another
_DRAWS = 1000  # offsets drawn per prompt before giving up


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The interpreter's stdlib .py files, sorted by their path relative to the stdlib root."""
    root = stdlib_root()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        found += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@dataclass(frozen=True)
class Corpus:
    text: str  # every file, each ending in a newline, concatenated in sorted order
    names: tuple[str, ...]  # relative paths of the files used
    content_sha256: str


@lru_cache(maxsize=1)
def corpus() -> Corpus:
    root = stdlib_root()
    parts: list[str] = []
    names: list[str] = []
    digest = hashlib.sha256()
    for path in stdlib_files():
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few legacy files are not UTF-8; they are left out, and the fingerprint says so
        text = text if text.endswith("\n") else text + "\n"
        parts.append(text)
        names.append(path.relative_to(root).as_posix())
        digest.update(text.encode())
    if not parts:
        raise SpecError(f"no Python source found under {root}; the synthetic workload needs the standard library")
    return Corpus("".join(parts), tuple(names), digest.hexdigest())


def corpus_fingerprint() -> dict:
    """What a run's synthetic prompts were cut from, so results can be compared honestly."""
    c = corpus()
    return {
        "python": platform.python_version(),
        "files": len(c.names),
        "chars": len(c.text),
        "files_sha256": hashlib.sha256("\n".join(c.names).encode()).hexdigest(),
        "content_sha256": c.content_sha256,
    }


@lru_cache(maxsize=8)
def _tokenizer(path: str, mtime_ns: int) -> Tokenizer:
    return Tokenizer.from_file(path)


def load_tokenizer(tokenizer_file: Path) -> Tokenizer:
    p = Path(tokenizer_file)
    try:
        return _tokenizer(str(p.resolve()), p.stat().st_mtime_ns)
    except FileNotFoundError:
        raise SpecError(f"tokenizer file {p} does not exist (a model directory needs tokenizer.json)") from None
    except Exception as exc:  # tokenizers raises its own exception type for bad JSON
        raise SpecError(f"tokenizer file {p} cannot be loaded ({exc}); rebuild or replace it") from None


def round_trips(tok: Tokenizer, ids: list[int]) -> bool:
    """True if the ids survive decode -> encode unchanged (what text-in engines will see)."""
    return tok.encode(tok.decode(ids, skip_special_tokens=False), add_special_tokens=False).ids == ids


def _cut(tok: Tokenizer, text: str, offset: int, length: int) -> list[int] | None:
    """`length` round-tripping tokens starting near the line that follows `offset`, or None."""
    start = text.find("\n", offset) + 1 or offset
    window = 5 * (length + _SLIDES) + 256  # stdlib source runs ~3.5 chars a token; grow if short
    while True:
        ids = tok.encode(text[start : start + window], add_special_tokens=False).ids
        # Drop the last few tokens: the window's end may split a word the full text would merge.
        usable = len(ids) - 8
        if usable >= length + _SLIDES or start + window >= len(text):
            break
        window *= 2
    for shift in range(min(_SLIDES, usable - length + 1)):
        cand = ids[shift : shift + length]
        if round_trips(tok, cand):
            return cand
    return None


def synthetic_prompts(tokenizer_file: Path, batch: int, length: int, seed: int) -> list[list[int]]:
    """`batch` distinct prompts of exactly `length` tokens of stdlib source, fixed by `seed`.

    Prompt i depends only on (seed, length, i) and the corpus, so a batch of 2 is the first two
    prompts of a batch of 4, and the same arguments always give the same prompts.
    """
    if batch < 1 or length < 1:
        raise SpecError(f"synthetic prompts need batch >= 1 and length >= 1, got batch={batch} length={length}")
    if seed < 0:
        raise SpecError(f"workload seed must be >= 0, got {seed}")
    tok = load_tokenizer(tokenizer_file)
    text = corpus().text
    rng = np.random.default_rng(seed)  # not keyed by length: a short prompt mostly prefixes a long one
    prompts: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    draws = 0
    while len(prompts) < batch:
        draws += 1
        if draws > _DRAWS * batch:
            raise SpecError(
                f"cannot cut {batch} distinct prompts of {length} tokens from the stdlib corpus "
                f"({len(text)} chars); use a smaller --input-len or batch"
            )
        ids = _cut(tok, text, int(rng.integers(0, len(text))), length)
        if ids is None or tuple(ids) in seen:
            continue
        seen.add(tuple(ids))
        prompts.append(ids)
    return prompts
