"""Quality of a cell's own generations, for workloads whose prompts have known answers (fim, needle).

The worker calls `score_cell` with the greedy tokens of the cell's last timed minibatch; the figures go into the
cell's metrics (metrics["fim"], metrics["needle"]). Every engine generates exactly --output-len tokens (EOS
ignored), so a generation is cut at its first end token before it is scored. No torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engines.study.schema import DEFAULT_DEPTH, Workload


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), two rows at a time."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - distance / longer length: 1.0 for equal strings, 0.0 for nothing in common."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - edit_distance(a, b) / longest


def cut_at(ids: list[int], stops: frozenset[int] | set[int]) -> list[int]:
    return ids[: next((k for k, t in enumerate(ids) if t in stops), len(ids))]


def middle_answer(generated: str, middle: str) -> str:
    """The generation as long as the middle in lines: a model that goes on past the hole is judged on the hole."""
    lines = generated.splitlines(keepends=True)
    return "".join(lines[: max(1, len(middle.splitlines()))])


def fim_scores(middles: list[str], answers: list[str]) -> dict[str, Any]:
    """Exact match (whitespace at the ends ignored) and mean edit similarity of answers against middles."""
    pairs = [(m.strip(), middle_answer(a, m).strip()) for m, a in zip(middles, answers)]
    n = len(pairs)
    return {
        "exact_match": sum(m == a for m, a in pairs) / n if n else None,
        "edit_similarity": sum(edit_similarity(m, a) for m, a in pairs) / n if n else None,
        "n": n,
    }


def score_fim(tokenizer_file: str, batch: int, length: int, seed: int, tokens: list[list[int]]) -> dict[str, Any]:
    from engines.models.fim import fim_examples, fim_tokens
    from engines.models.workloads import load_tokenizer

    tok = load_tokenizer(Path(tokenizer_file))
    fim = fim_tokens(tok)
    examples = fim_examples(tokenizer_file, batch, length, seed)
    answers = [tok.decode(cut_at(t, fim.stops), skip_special_tokens=False) for t in tokens]
    return {**fim_scores([e.middle for e in examples], answers), "format": fim.family}


def found_value(generated: str, value: int) -> bool:
    """The planted number, whole (not a piece of a longer number), anywhere in the answer."""
    return re.search(rf"(?<!\d){value}(?!\d)", generated) is not None


def score_needle(tokenizer_file: str, batch: int, length: int, depth: int, seed: int,
                 tokens: list[list[int]]) -> dict[str, Any]:  # fmt: skip
    from engines.models.needle import needle_examples
    from engines.models.workloads import load_tokenizer

    tok = load_tokenizer(Path(tokenizer_file))
    examples = needle_examples(tokenizer_file, batch, length, depth, seed)
    hits = sum(found_value(tok.decode(t, skip_special_tokens=True), e.value) for e, t in zip(examples, tokens))
    n = len(examples)
    return {"accuracy": hits / n, "hits": hits, "n": n, "context": length, "depth": depth,
            "depth_actual": sum(e.depth for e in examples) / n}  # fmt: skip


def score_cell(tokenizer_file: str | None, workload: dict | None, batch: int, length: int, seed: int,
               params: dict | None, tokens: list[list[int]]) -> dict[str, Any]:  # fmt: skip
    """metrics for a cell of a scored workload ({} for the others)."""
    kind = Workload.model_validate(workload or {}).kind
    if tokenizer_file is None:
        return {}
    if kind == "fim":
        return {"fim": score_fim(tokenizer_file, batch, length, seed, tokens)}
    if kind == "needle":
        depth = (params or {}).get("depth", DEFAULT_DEPTH)
        return {"needle": score_needle(tokenizer_file, batch, length, depth, seed, tokens)}
    return {}
