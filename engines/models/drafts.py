"""Draft models of speculative decoding (`--spec draft=MODEL`): checked in the parent, found in the worker."""

from __future__ import annotations

from engines.base import SpecError
from engines.models.refs import check_model, materialize
from engines.study.speculation import Spec


def check_draft_model(spec: Spec) -> None:
    """Parent-side: a draft reference that cannot exist fails before anything runs."""
    if spec.method == "draft" and spec.draft != "tiny-draft":
        if check_model(spec.draft) in ("gguf", "url"):
            raise SpecError(f"draft model {spec.draft} must be an HF model (tiny-draft, tiny, a directory or an HF id)")


def draft_path(ref: str) -> str:
    """Worker-side: the directory or id of a draft model."""
    if ref == "tiny-draft":
        from engines.models.tiny import ensure_tiny_draft  # numpy: the worker's, not the dashboard's

        return str(ensure_tiny_draft())
    return materialize(ref)
