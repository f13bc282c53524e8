"""`codebench-tui check`: greedy agreement of engines against a reference engine.

Each engine configuration decodes the same prompts greedily in its own worker; the tokens are
compared with the reference's (hf-generate fp32 by default): share of identical tokens and the
position of the first divergence per prompt.
"""

from __future__ import annotations

import argparse
import json

from engines.agreement import format_line, summary
from engines.spec import SpecError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="greedy agreement of engines with a reference engine")
    p.add_argument("--model", default="tiny", help="tiny, an HF model directory or a .gguf file")
    p.add_argument("--engines", required=True, help="comma list, e.g. llama.cpp,hf-generate")
    p.add_argument("--precision", default=None, help="comma list of precisions (engines that have them)")
    p.add_argument("--quant", default=None, help="comma list, e.g. f32,q8_0,q4_0")
    p.add_argument("--reference", default="hf-generate", help="reference engine (default: hf-generate fp32)")
    p.add_argument("--reference-precision", default="fp32")
    p.add_argument("--prompts", type=int, default=8, help="number of prompts (default 8)")
    p.add_argument("--input-len", type=int, default=32, help="prompt length in tokens (default 32)")
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="exit 1 if any engine's token agreement is below this share (e.g. 1.0)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.set_defaults(func=run)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def run(args: argparse.Namespace) -> int:
    from engines.models import check_model
    from engines.registry import check, expand, get
    from engines.runner import greedy_tokens

    check_model(args.model)  # SpecError -> one line, exit 2 (tui.cli)
    for name, value in (("--prompts", args.prompts), ("--input-len", args.input_len), ("--tokens", args.tokens)):
        if value < 1:
            raise SpecError(f"{name} must be at least 1, got {value}")
    has_precision = "precision" in get(args.reference).axes
    ref = expand([args.reference], precision=[args.reference_precision] if has_precision else None)[0]
    runs = expand(_split(args.engines) or [], precision=_split(args.precision), quant=_split(args.quant))
    for r in [ref, *runs]:
        avail = check(r, args.device)
        if not avail.ok:
            raise SpecError(f"{r.label()} cannot run here: {avail.reason}" + (f" ({avail.hint})" if avail.hint else ""))

    if not args.json:
        print(f"reference: {ref.label()}, {args.prompts} prompts x {args.tokens} tokens on {args.model}")
    kw = dict(batch=args.prompts, input_len=args.input_len, seed=args.seed)
    try:
        prompts, ref_tokens = greedy_tokens(args.model, ref, args.device, args.tokens, **kw)
    except (RuntimeError, TimeoutError) as exc:
        print(f"reference {ref.label()} failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
        return 1
    results = {}
    worst = 1.0
    for r in runs:
        try:
            _, tokens = greedy_tokens(args.model, r, args.device, args.tokens, prompts=prompts)
        except (RuntimeError, TimeoutError) as exc:
            results[r.label()] = {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)}
            worst = 0.0
            if not args.json:
                print(f"{r.label()}: failed: {results[r.label()]['error']}")
            continue
        s = summary(ref_tokens, tokens)
        results[r.label()] = s
        worst = min(worst, s["token_agreement"])
        if not args.json:
            print(format_line(r.label(), s))
    if args.json:
        print(json.dumps({"reference": ref.label(), "prompts": prompts, "reference_tokens": ref_tokens,
                          "results": results}, indent=2))  # fmt: skip
    if args.min_agreement is not None and worst < args.min_agreement:
        return 1
    return 0
