"""`codebench-tui verdict`: the stored configuration to run under the user's constraints, with its evidence
(store/verdict.py decides; this parses, loads and prints, or writes Markdown or HTML)."""

from __future__ import annotations

import argparse
from typing import Any

from tui.commands.run import parse_size

FORMATS = ("text", "md", "html", "json")


def register(sub: argparse._SubParsersAction) -> None:
    from store.verdict import OBJECTIVES

    p = sub.add_parser("verdict", help="which stored configuration to run under your constraints, and why",
                       description="Rank the stored configurations (one per run) that meet every constraint at a "
                                   "workload point, or show where each wins over the whole grid; every exclusion and "
                                   "every missing figure is one line.")  # fmt: skip
    p.add_argument("runs", nargs="*", metavar="RUN", help="runs to judge (default: --last-study)")
    p.add_argument("--last-study", action="store_true", help="every run of the latest study")
    p.add_argument("--objective", default="tokens_per_s", choices=list(OBJECTIVES))
    p.add_argument("--max-mem", type=parse_size, metavar="SIZE", help="peak memory at most, e.g. 24GiB")
    p.add_argument("--min-quality", metavar="BOUNDS", help="e.g. agreement>=0.99,pass@1>=0.3,perplexity<=12")
    p.add_argument("--slo", help="e.g. ttft=200ms,tpot=50ms,e2e=5s (serving cells: their stored requests)")
    p.add_argument("--attainment", type=float, default=0.99, help="share of requests that must meet the SLO (0.99)")
    p.add_argument("--at", metavar="POINT", help="the workload point, e.g. batch=8,input=2048 (default: every point)")
    p.add_argument("--format", default="text", choices=FORMATS)
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (md, html, json; default: standard output)")
    p.set_defaults(func=run)


def constraints(args: argparse.Namespace) -> Any:
    from engines.base import SpecError
    from engines.study.load import parse_slo
    from store.verdict import Constraints, VerdictError, parse_at, parse_quality

    try:
        if not 0 < args.attainment <= 1:
            raise VerdictError(f"--attainment must be above 0 and at most 1, got {args.attainment:g}")
        return Constraints(objective=args.objective, max_mem=args.max_mem,
                           quality=parse_quality(args.min_quality) if args.min_quality else [],
                           slo=parse_slo(args.slo) if args.slo else None, attainment=args.attainment,
                           at=parse_at(args.at) if args.at else None)  # fmt: skip
    except VerdictError as exc:
        raise SpecError(str(exc)) from None


def predictor(result: Any, point: dict[str, int]) -> int | None:
    """The memory model's peak for a configuration at a point it was not measured at; None where it cannot."""
    try:
        from engines import registry
        from engines.models.memory import predict
        from engines.study.grid import Cell
        from engines.study.schema import EngineRun

        cfg = result.run.get("config") or {}
        run = EngineRun(engine=cfg.get("engine") or result.run["engine"], precision=cfg.get("precision"),
                        attention=cfg.get("attention"), quant=cfg.get("quant"), tp=cfg.get("tp") or 1,
                        options=cfg.get("options") or {})  # fmt: skip
        nearest = result.cells[0] if result.cells else {"batch": 1, "input_len": 1, "output_len": 1}
        cell = Cell(point.get("batch", nearest["batch"]), point.get("input_len", nearest["input_len"]),
                    point.get("output_len", nearest["output_len"]))  # fmt: skip
        pred = predict(result.run["model"], run, cell, registry.get(run.engine), result.run.get("device") or "cpu")
        return pred.total if pred is not None else None
    except Exception:  # noqa: BLE001 - a model it cannot size (gone, a URL, an import): no prediction, said so
        return None


def _results(args: argparse.Namespace) -> list[Any]:
    from engines.base import SpecError
    from store.db import open_db
    from store.queries import list_runs, runs_in_group
    from store.results import load_results

    db = open_db(args.db, create=False)
    try:
        refs = list(args.runs)
        if args.last_study or not refs:
            with db.session() as s:
                latest = list_runs(session=s, limit=1)
                if not latest:
                    raise SpecError("the database holds no runs; run a study first")
                refs += [r.id for r in runs_in_group(latest[0].group_id, session=s)]
        return load_results(db, refs)
    finally:
        db.close()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from store.verdict import decide, tables, text_lines
    from tui.render import rich_table

    c = constraints(args)  # a bad constraint: one line, before the database is opened
    if args.output:
        from tui.outputs import check_output, db_in_use

        check_output(args.output, db_in_use(args), "-o")
    results = _results(args)
    verdict = decide(results, c, predictor)
    if args.format != "text":
        import json

        from store.verdict import to_json
        from store.verdict_export import to_html, to_markdown

        text = json.dumps(to_json(verdict), indent=1) + "\n" if args.format == "json" else \
            (to_markdown if args.format == "md" else to_html)(verdict)  # fmt: skip
        if args.output:
            from tui.outputs import db_in_use, write_atomic

            write_atomic(args.output, text, db_in_use(args), "-o")
        else:
            print(text, end="")
        return 0
    console = Console()
    for t in tables(verdict):
        console.print(rich_table(t))
    for line in text_lines(verdict):
        console.print(Text(line))
    return 0
