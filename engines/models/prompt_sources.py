"""Prompts for the workloads beyond `synthetic`: HumanEval prompts, user JSONL text, shared prefix.

Every engine gets prompts of one exact length (batched HF generation needs it, and cells are
comparable), so a text longer than the cell's input length keeps its last `input_len` tokens
(where generation continues); shorter texts are not used. No torch here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import SpecError
from engines.models.workloads import load_tokenizer, round_trips, synthetic_prompts
from engines.study.schema import DEFAULT_DEPTH, Workload

_SHIFTS = 8  # token shifts tried when a cut does not survive decode -> encode


def read_jsonl_texts(path: str | Path) -> list[str]:
    """The "text" field of every line; a one-line SpecError for anything else (the corpus reader's rules)."""
    from engines.quality.perplexity import jsonl_corpus

    return jsonl_corpus(path, "text", kind="workload file")


@lru_cache(maxsize=4)
def _texts(kind: str, path: str | None) -> tuple[str, ...]:
    if kind == "humaneval":
        from engines.quality.humaneval import load_problems

        return tuple(p.prompt for p in load_problems().values())
    return tuple(read_jsonl_texts(path or ""))


def check_workload(workload: Workload, model: str | None = None) -> None:
    """Parent-side: what can be known before any worker starts (the file exists and parses, the FIM tokens)."""
    if workload.kind in ("humaneval", "jsonl"):
        _texts(workload.kind, workload.path)
    if workload.kind == "fim" and model:
        from engines.models.fim import check_fim_model

        check_fim_model(model)


def _tail(tok: Any, ids: list[int], length: int) -> list[int] | None:
    for shift in range(min(_SHIFTS, len(ids) - length + 1)):
        cand = ids[len(ids) - length - shift : len(ids) - shift]
        if round_trips(tok, cand):
            return cand
    return None


def text_prompts(tokenizer_file: Path, workload: Workload, batch: int, length: int, seed: int) -> list[list[int]]:
    """`batch` prompts of exactly `length` tokens from HumanEval or a JSONL file, chosen by `seed`."""
    tok = load_tokenizer(tokenizer_file)
    texts = _texts(workload.kind, workload.path)
    order = np.random.default_rng(seed).permutation(len(texts))
    prompts: list[list[int]] = []
    for i in order:
        ids = tok.encode(texts[i], add_special_tokens=False).ids
        if len(ids) >= length:
            cut = _tail(tok, ids, length)
            if cut is not None:
                prompts.append(cut)
                if len(prompts) == batch:
                    return prompts
    where = "HumanEval" if workload.kind == "humaneval" else workload.path
    raise SpecError(f"{where} has only {len(prompts)} prompts of at least {length} tokens, the cell needs {batch}; "
                    "use a smaller --input-len or --batch")  # fmt: skip


def shared_prefix_prompts(tokenizer_file: Path, completions: int, shared_len: int, suffix_len: int,
                          seed: int) -> list[list[int]]:  # fmt: skip
    """One shared prompt of P tokens followed by N distinct suffixes of U tokens (stdlib source)."""
    (prefix,) = synthetic_prompts(tokenizer_file, 1, shared_len, seed)
    suffixes = synthetic_prompts(tokenizer_file, completions, suffix_len, seed + 1)
    return [prefix + s for s in suffixes]


def prompts_for(tokenizer_file: Path, workload: dict[str, Any] | None, batch: int, length: int, seed: int,
                params: dict[str, int] | None = None) -> list[list[int]]:  # fmt: skip
    """The worker's entry point: a cell's prompts for any workload."""
    w = Workload.model_validate(workload or {})
    if w.kind == "shared-prefix":
        p = params or {}
        if "shared_len" not in p or "suffix_len" not in p:
            raise SpecError("a shared-prefix cell needs shared_len and suffix_len")
        return shared_prefix_prompts(tokenizer_file, batch, p["shared_len"], p["suffix_len"], seed)
    if w.kind in ("humaneval", "jsonl"):
        return text_prompts(tokenizer_file, w, batch, length, seed)
    if w.kind == "fim":
        from engines.models.fim import fim_prompts

        return fim_prompts(tokenizer_file, batch, length, seed)
    if w.kind == "needle":
        from engines.models.needle import needle_prompts

        return needle_prompts(tokenizer_file, batch, length, (params or {}).get("depth", DEFAULT_DEPTH), seed)
    return synthetic_prompts(tokenizer_file, batch, length, seed)
