"""`codebench-tui crosscheck`: the same cells through codebench and through the engine's own benchmark tool,
interleaved round by round (codebench first in odd rounds, the tools first in even ones). The tools' output is
imported like any other file (store.peers); the ratio per cell is shown with its interval over the rounds
(store.crosscheck). What each engine runs: tui/crosscheck_plans.py.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from tui.commands.run import _option, _text

ENGINES = ("llama.cpp", "vllm", "openai")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crosscheck", help="codebench against the engine's own benchmark tool on the same cells",
                       description="Run the same cells through codebench and through the engine's own tool "
                                   "(llama.cpp: llama-bench and llama-batched-bench; vllm: vllm bench throughput; "
                                   "openai: vllm bench serve against the server), interleaved, import the tool's "
                                   "output and show codebench ÷ tool per cell with its 95% interval over the rounds.")  # fmt: skip
    p.add_argument("--engine", required=True, choices=ENGINES)
    p.add_argument("--model", default="tiny", type=_text, help="model (openai: the server's URL, .../v1)")
    p.add_argument("--quant", default="f32", help="llama.cpp: the GGUF type codebench converts to (default f32)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="vllm: the dtype of both sides (default codebench's fp32; the tool is given the same)")
    p.add_argument("--batch", default="1,2,4", help="batch sizes (openai: concurrencies; default 1,2,4)")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--output-len", type=int, default=32, help="generated tokens (default 32)")
    p.add_argument("--requests", type=int, default=32, help="openai: requests per cell (default 32)")
    p.add_argument("--tokenizer", type=_text, help="openai: the served model's HF directory, for vLLM's client "
                   "(default tiny's)")  # fmt: skip
    p.add_argument("--served-model", type=_text, help="openai: the model name the server expects")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per cell and tool repetitions per round (default 3)")
    p.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="engine option, passed to the tools too where they have the flag (e.g. n_threads=2)")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the ratios as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> list[int]:
    from engines.base import SpecError

    try:
        batches = sorted({int(b) for b in str(args.batch).split(",")})
    except ValueError:
        raise SpecError(f"--batch: {args.batch[:40]!r} is not a list of batch sizes, e.g. 1,2,4") from None
    for name, value, lo, hi in (("--batch", min(batches), 1, 512), ("--batch", max(batches), 1, 512),
                                ("--input-len", args.input_len, 1, 65536), ("--output-len", args.output_len, 2, 65536),
                                ("--requests", args.requests, 1, 100_000), ("--rounds", args.rounds, 1, 100),
                                ("--repeats", args.repeats, 1, 100)):  # fmt: skip
        if not lo <= value <= hi:
            raise SpecError(f"{name} must be from {lo} to {hi}, got {value}")
    if args.precision and args.engine != "vllm":
        raise SpecError(f"--precision is for --engine vllm; {args.engine} " +
                        ("takes --quant" if args.engine == "llama.cpp" else "runs at the server's dtype"))
    if args.json:
        from tui.outputs import check_output, db_in_use

        check_output(args.json, db_in_use(args), "--json")
    return batches


def _codebench(args: argparse.Namespace, plan: Any, batches: list[int], round_no: int) -> str:
    from store.db import open_db
    from store.queries import resolve_run
    from tui.commands.run import execute, spec_from_args
    from tui.parsing import parse_command

    argv = ["run", "--model", args.model, *plan.run_argv(), "--batch", ",".join(map(str, batches)),
            "--input-len", str(args.input_len), "--output-len", str(args.output_len), "--warmup", "1", "--iters", "1",
            "--repeats", str(args.repeats), "--name", f"crosscheck round {round_no + 1}"]  # fmt: skip
    run_args = parse_command("run", argv)
    run_args.opt, run_args.db, run_args.quiet, run_args.print_results = list(args.opt), args.db, args.quiet, False
    code = execute(spec_from_args(run_args), run_args)
    if code != 0:
        raise RuntimeError(f"codebench's round {round_no + 1} ended with exit code {code}")
    db = open_db(args.db, create=False)
    try:
        with db.session() as s:
            row = resolve_run(run_args.run_ids[0], session=s)
            plan.after_codebench(row.runtime or {}, row.device or "cpu")
    finally:
        db.close()
    return run_args.run_ids[0]


def _import(db_path: Any, path: Path, hints: dict) -> str:
    from store.db import open_db
    from store.export import import_export
    from store.importdoc import read_export

    doc = read_export(path, hints)
    db = open_db(db_path, create=True)
    try:
        with db.session() as s:
            import_export(doc, session=s)
            s.commit()
    finally:
        db.close()
    return doc["runs"][0]["id"]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tui.crosscheck_plans import PLANS

    batches = _check(args)
    plan = PLANS[args.engine](args, batches)
    console = Console()
    rounds: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="codebench-crosscheck-") as tmp:
        for r in range(args.rounds):
            ids: dict[str, str] = {}
            out = Path(tmp) / f"round{r}"
            out.mkdir()
            for side in ("codebench", "tools") if r % 2 == 0 else ("tools", "codebench"):
                if side == "codebench":
                    ids["codebench"] = _codebench(args, plan, batches, r)
                else:
                    for name, path, hints in plan.tools(out):
                        ids[name] = _import(args.db, path, hints)
            rounds.append(ids)
            if not args.quiet:
                console.print(f"round {r + 1} of {args.rounds} done")
    return report(console, args, plan, rounds)


def report(console: Any, args: argparse.Namespace, plan: Any, rounds: list[dict[str, str]]) -> int:
    from rich.table import Table
    from rich.text import Text

    from store.crosscheck import HEADERS, table_rows
    from store.db import open_db
    from store.results import load_results
    from store.safe import NAME, shown
    from tui.outputs import db_in_use, write_atomic

    db = open_db(args.db, create=False)
    ids = [i for r in rounds for i in r.values()]
    results = dict(zip(ids, load_results(db, ids)))
    db.close()
    pairs = plan.pairings(results, rounds)
    table = Table(title=Text(f"codebench ÷ {plan.title}, {shown(args.model, NAME)}, {len(rounds)} round(s)"))
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("figure", "cell", "tool", "verdict") else "right")
    seconds = any(p.figure.startswith(("TTFT", "ITL")) for p in pairs)
    fmt = (lambda v: "-" if v is None else f"{v * 1000:,.2f} ms") if seconds else (lambda v: "-" if v is None else f"{v:,.1f}")
    for row in table_rows(pairs, fmt):
        table.add_row(*(Text(x) for x in row))
    console.print(table)
    console.print(Text(f"runs stored: codebench {', '.join(r['codebench'][:8] for r in rounds)}; the tools' output "
                       "imported beside them"))  # fmt: skip
    if args.json:
        write_atomic(args.json, json.dumps([p.summary() for p in pairs], indent=1) + "\n", db_in_use(args), "--json")
    return 0
