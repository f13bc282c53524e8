"""Speculative decoding without torch: the `spec` axis values, per-cell metrics, reference runs.

`--spec none,ngram=4,draft=tiny-draft`:
    none          no speculation (the matched baseline; added automatically)
    ngram=N       prompt-lookup decoding: N tokens proposed per step from n-grams of the context
    draft=MODEL   assisted decoding: a draft model (tiny-draft, tiny, a directory, an HF id) proposes
                  tokens (option draft_tokens, default 5) that the target verifies in one forward

Engines report per minibatch (GenerateResult.extra), with vLLM's names where vLLM has them:
    spec_draft_tokens     draft tokens proposed
    spec_accepted_tokens  draft tokens the target accepted
    spec_drafts           verification steps that had a proposal
    spec_steps            target forward passes (each yields accepted + 1 tokens)
    time_draft_s, time_verify_s, time_total_s   the per-step breakdown, summed over the call
The worker folds them into the cell's metrics with `cell_metrics`; the runner adds the figures
of the matched reference run (`reference`) so a stored cell carries its own speed-up.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from engines.base import SpecError

SPEC_PATTERNS = ("none", "ngram=N", "draft=MODEL")  # what an engine's "spec" axis may allow
DRAFT_TOKENS = 5  # draft tokens per step when option draft_tokens is not given
SPEC_OPTIONS = ("draft_tokens", "ngram_max")  # --opt keys of HF speculation (ngram_max: longest n-gram matched, HF default 2)
MAX_SPEC_TOKENS = 64


@dataclass(frozen=True)
class Spec:
    method: str  # "none", "ngram" or "draft"
    tokens: int | None = None  # ngram: tokens proposed per step
    draft: str | None = None  # draft: the model reference

    def __str__(self) -> str:
        return {"none": "none", "ngram": f"ngram={self.tokens}", "draft": f"draft={self.draft}"}[self.method]


def parse_spec(value: str | None) -> Spec:
    """'none', 'ngram=N' or 'draft=MODEL'; anything else is a SpecError naming the syntax."""
    if value is None or value == "none":
        return Spec("none")
    key, sep, arg = str(value).partition("=")
    key, arg = key.strip(), arg.strip()
    if sep and key == "ngram":
        if not arg.isdigit() or not 1 <= int(arg) <= MAX_SPEC_TOKENS:
            raise SpecError(f"spec '{value}': N in ngram=N must be an integer 1..{MAX_SPEC_TOKENS} (e.g. ngram=4)")
        return Spec("ngram", tokens=int(arg))
    if sep and key == "draft":
        if not arg:
            raise SpecError(f"spec '{value}' names no draft model (e.g. draft=tiny-draft)")
        return Spec("draft", draft=arg)
    raise SpecError(f"unknown spec '{value}' (use none, ngram=N or draft=MODEL, e.g. --spec none,ngram=4,draft=tiny-draft)")


def spec_allowed(value: str, allowed: Iterable[str]) -> bool:
    """Does `value` fit one of an engine's spec patterns (exact, or ngram=N / draft=MODEL)?"""
    try:
        spec = parse_spec(value)
    except SpecError:
        return False
    pattern = {"none": "none", "ngram": "ngram=N", "draft": "draft=MODEL"}[spec.method]
    return pattern in allowed or str(spec) in allowed


def spec_options(options: dict[str, Any]) -> dict[str, int]:
    """draft_tokens and ngram_max with defaults; a bad value is a SpecError."""
    out = {"draft_tokens": options.get("draft_tokens", DRAFT_TOKENS), "ngram_max": options.get("ngram_max", 2)}
    for key, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SPEC_TOKENS:
            raise SpecError(f"option {key} must be an integer 1..{MAX_SPEC_TOKENS}, got {value!r}")
    return out


# --- arithmetic ------------------------------------------------------------------------


def acceptance_rate(accepted: float, proposed: float) -> float | None:
    """Accepted / proposed draft tokens; None when nothing was proposed."""
    if proposed < 0 or accepted < 0 or accepted > proposed:
        raise ValueError(f"accepted ({accepted}) must be within 0..proposed ({proposed})")
    return accepted / proposed if proposed else None


def mean_accepted_len(accepted: float, drafts: float) -> float | None:
    """Accepted draft tokens per verification step that had a proposal."""
    return accepted / drafts if drafts else None


def tokens_digest(tokens: list[list[int]]) -> str:
    """sha256 of generated tokens, to check greedy identity across runs without storing them."""
    h = hashlib.sha256()
    for seq in tokens:
        h.update((",".join(map(str, seq)) + ";").encode())
    return h.hexdigest()


def cell_metrics(extras: list[dict[str, Any]], batch: int, output_len: int) -> dict[str, Any]:
    """Fold the timed minibatches' extras into the cell's `speculative` and `breakdown` metrics."""
    out: dict[str, Any] = {}
    extras = [e for e in extras if e]
    if not extras:
        return out
    tokens = batch * output_len * len(extras)
    if any("spec_draft_tokens" in e for e in extras):
        tot = {k: sum(e.get(k) or 0 for e in extras)
               for k in ("spec_draft_tokens", "spec_accepted_tokens", "spec_drafts", "spec_steps")}  # fmt: skip
        spec: dict[str, Any] = {
            "method": extras[-1].get("spec_method"),
            "proposed": tot["spec_draft_tokens"],
            "accepted": tot["spec_accepted_tokens"],
            "drafts": tot["spec_drafts"],
            "acceptance_rate": acceptance_rate(tot["spec_accepted_tokens"], tot["spec_draft_tokens"]),
            "mean_accepted_len": mean_accepted_len(tot["spec_accepted_tokens"], tot["spec_drafts"]),
        }
        if tot["spec_steps"]:
            spec["steps"] = tot["spec_steps"]
            spec["tokens_per_step"] = tokens / tot["spec_steps"]
        for key in ("spec_k", "sequential"):
            if key in extras[-1]:
                spec[key.removeprefix("spec_")] = extras[-1][key]
        out["speculative"] = spec
    if all("time_total_s" in e for e in extras):
        mean = {k: statistics.fmean(e.get(k) or 0.0 for e in extras) for k in ("time_draft_s", "time_verify_s", "time_total_s")}
        other = max(mean["time_total_s"] - mean["time_draft_s"] - mean["time_verify_s"], 0.0)
        per_tok = 1000.0 / (batch * output_len)
        out["breakdown"] = {  # mean per timed minibatch, and per generated token in ms
            "draft_s": mean["time_draft_s"], "verify_s": mean["time_verify_s"], "other_s": other,
            "total_s": mean["time_total_s"], "draft_ms_per_token": mean["time_draft_s"] * per_tok,
            "verify_ms_per_token": mean["time_verify_s"] * per_tok, "other_ms_per_token": other * per_tok,
        }  # fmt: skip
    return out


# --- the matched reference run ---------------------------------------------------------


def is_speculative(run: Any) -> bool:
    return getattr(run, "spec", None) not in (None, "none")


def reference_match(run: Any, candidate: Any, reference: str = "") -> bool:
    """Is `candidate` (an earlier EngineRun of the study) the reference `run` is measured against?

    A speculative run: the same configuration with spec=none. An engine that declares a reference engine
    (EngineInfo.reference: the shared-prefix engines, against plain hf-generate): that engine, without
    speculation, in the same precision.
    """
    if is_speculative(run):
        return candidate.model_dump() == run.model_copy(update={"spec": "none"}).model_dump()
    if reference:
        return (candidate.engine == reference and candidate.precision == run.precision
                and candidate.spec in (None, "none"))  # fmt: skip
    return False


def compare_to_reference(run: Any, cell: dict[str, Any], ref_label: str, ref_run_id: str,
                         ref: dict[str, Any], lossy: bool = False) -> dict[str, Any]:  # fmt: skip
    """What a cell stores about its reference: speed-up, token identity (unless the engine is lossy by
    design, EngineInfo.lossy), the reference's breakdown.

    `cell` and `ref` hold "tokens_per_s" and "metrics" (as the runner has them for a finished cell).
    """
    tps, ref_tps = cell.get("tokens_per_s"), ref.get("tokens_per_s")
    mine, theirs = (cell.get("metrics") or {}), (ref.get("metrics") or {})
    identical = None
    if not lossy and mine.get("tokens_sha256") and theirs.get("tokens_sha256"):
        identical = mine["tokens_sha256"] == theirs["tokens_sha256"]
    out: dict[str, Any] = {
        "label": ref_label, "run_id": ref_run_id, "tokens_per_s": ref_tps,
        "speedup": tps / ref_tps if tps and ref_tps else None, "identical": identical,
    }  # fmt: skip
    if theirs.get("breakdown"):
        out["breakdown"] = theirs["breakdown"]
    return out
