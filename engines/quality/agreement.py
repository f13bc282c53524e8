"""Greedy agreement between a reference engine and a candidate: pure logic, no engine imports.

Both sides decode the same prompts greedily; after the first differing token the sequences
condition on different text, so the first divergence is the headline and the share of
identical positions is a coarse "how far it drifts" figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class PromptAgreement:
    index: int
    n_tokens: int  # positions compared (the reference length)
    n_same: int  # positions where both engines emitted the same token
    first_divergence: int | None  # first differing position, None if identical

    @property
    def identical(self) -> bool:
        return self.first_divergence is None


def compare_prompt(index: int, reference: Sequence[int], candidate: Sequence[int]) -> PromptAgreement:
    """Compare one prompt's greedy tokens; a missing or extra candidate token counts as a difference."""
    n = len(reference)
    same = sum(1 for a, b in zip(reference, candidate) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(reference, candidate)) if a != b), None)
    if first is None and len(candidate) != n:
        first = min(n, len(candidate))
    return PromptAgreement(index, n, same, first)


def compare(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> list[PromptAgreement]:
    if len(reference) != len(candidate):
        raise ValueError(f"reference has {len(reference)} prompts, candidate {len(candidate)}; decode the same prompts")
    return [compare_prompt(i, r, c) for i, (r, c) in enumerate(zip(reference, candidate))]


def summary(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The figures stored with a run and shown in compare.

    token_agreement: identical positions / reference positions (1.0 = identical);
    prompts_identical: share of prompts with no difference at all;
    first_divergence: per prompt, None where identical; min/median over the diverging prompts.
    """
    rows = compare(reference, candidate)
    total = sum(r.n_tokens for r in rows)
    firsts = sorted(r.first_divergence for r in rows if r.first_divergence is not None)
    return {
        "prompts": len(rows),
        "tokens": total,
        "token_agreement": (sum(r.n_same for r in rows) / total) if total else 1.0,
        "prompts_identical": (sum(r.identical for r in rows) / len(rows)) if rows else 1.0,
        "first_divergence": [r.first_divergence for r in rows],
        "first_divergence_min": firsts[0] if firsts else None,
        "first_divergence_median": firsts[len(firsts) // 2] if firsts else None,
        "per_prompt": [asdict(r) for r in rows],
    }


def format_line(label: str, s: dict[str, Any]) -> str:
    """One human line, e.g. `llama.cpp q4_0: 87.5% tokens identical, 5/8 prompts identical, first divergence at 12`."""
    n_same = round(s["prompts_identical"] * s["prompts"])
    where = "none" if s["first_divergence_min"] is None else f"token {s['first_divergence_min']}"
    return (
        f"{label}: {100 * s['token_agreement']:.1f}% tokens identical, "
        f"{n_same}/{s['prompts']} prompts identical, first divergence: {where}"
    )
