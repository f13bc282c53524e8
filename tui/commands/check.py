"""`codebench-tui check`: greedy agreement of engines against a reference engine.

Each engine configuration decodes the same prompts greedily in its own worker; the tokens are
compared with the reference's (hf-generate fp32 by default): share of identical tokens and the
position of the first divergence per prompt.
"""

from __future__ import annotations

import argparse
import json


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
    p.add_argument("--name", default=None)
    p.add_argument("--min-agreement", type=float, default=None,
                   help="exit 1 if any engine's token agreement is below this share (e.g. 1.0)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def run(args: argparse.Namespace) -> int:
    """A study with no speed cells and a check: every engine's agreement is stored with its run."""
    from engines.base import SpecError
    from engines.quality.agreement import format_line
    from engines.registry import expand, get
    from engines.study.schema import build_spec
    from store.db import open_db
    from store.queries import quality_of
    from store.safe import NAME, first_line, shown
    from tui.commands.run import execute

    for name, value in (("--prompts", args.prompts), ("--input-len", args.input_len), ("--tokens", args.tokens)):
        if value < 1:
            raise SpecError(f"{name} must be at least 1, got {value}")
    has_precision = "precision" in get(args.reference).axes
    ref = expand([args.reference], precision=[args.reference_precision] if has_precision else None)[0]
    runs = expand(_split(args.engines) or [], precision=_split(args.precision), quant=_split(args.quant))
    spec = build_spec({
        "model": args.model, "device": args.device, "grid": None, "name": "check",
        "runs": [r.model_dump() for r in runs],
        "check": {"reference": ref.model_dump(), "prompts": args.prompts, "input_len": args.input_len,
                  "tokens": args.tokens, "seed": args.seed},
    })  # fmt: skip
    args.quiet = args.quiet or args.json
    args.print_results = not args.json
    rc = execute(spec, args)
    if rc != 0:
        return rc
    db = open_db(args.db, create=False)
    results, worst = {}, 1.0
    with db.session() as s:
        for run_id in args.run_ids:
            from store.models import Run

            run = s.get(Run, run_id)
            rows = [q for q in quality_of(run_id, session=s) if q.metric == "agreement"]
            if not rows or rows[-1].value is None:
                err = rows[-1].details.get("error", "no result") if rows else "no result"
                results[run.label] = {"error": err}
                worst = 0.0
                if not args.json:
                    print(f"{shown(run.label, NAME)}: failed: {first_line(err)}")
                continue
            results[run.label] = rows[-1].details
            worst = min(worst, rows[-1].value)
            if not args.json:
                print(shown(format_line(run.label, rows[-1].details), lines=True))
    db.close()
    if args.json:
        print(json.dumps({"reference": ref.label(), "results": results}, indent=2))
    if args.min_agreement is not None and worst < args.min_agreement:
        return 1
    return 0
