"""`codebench-tui noise`: this host's noise floor, from one configuration run twice, interleaved (an A/A pair).

Whatever the two runs' ratios show is noise, since they measure the same thing: the floor per metric is
the 95th percentile of |log ratio| over the cells. It is stored keyed by host and kind of device, and
`compare` treats smaller changes on this host as noise.
"""

from __future__ import annotations

import argparse

from tui.commands.run import _env_var, _list, _option, _text

DEFAULT_GRID = {"batch": "1,2,4", "input_len": "32,128", "output_len": "32"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noise", help="measure this host's noise floor (the same configuration twice, interleaved)",
                       description="Run one configuration as two interleaved runs (an A/A pair) and store how far "
                                   "their ratios stray from 1: compare treats smaller changes as noise.")  # fmt: skip
    p.add_argument("--model", default="tiny", type=_text)
    p.add_argument("--engine", default="hf-generate", type=_text, help="one engine (default hf-generate)")
    p.add_argument("--precision", type=_list)
    p.add_argument("--attention", type=_list)
    p.add_argument("--quant", type=_list)
    p.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch", default=DEFAULT_GRID["batch"], help=f"batch sizes (default {DEFAULT_GRID['batch']})")
    p.add_argument("--input-len", default=DEFAULT_GRID["input_len"], help=f"default {DEFAULT_GRID['input_len']}")
    p.add_argument("--output-len", default=DEFAULT_GRID["output_len"], help=f"default {DEFAULT_GRID['output_len']}")
    p.add_argument("--warmup", type=int, help="untimed minibatches per cell (default 1)")
    p.add_argument("--iters", type=int, help="timed minibatches per repeat (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per cell (default 5)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--worker-env", type=_env_var, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=run)


def _run_args(args: argparse.Namespace) -> argparse.Namespace:
    """The `run` command's arguments for one configuration: parsed by its own parser, so both agree."""
    from tui.parsing import parse_command

    argv = ["run", "--model", args.model, "--engine", args.engine, "--batch", args.batch, "--input-len", args.input_len,
            "--output-len", args.output_len, "--repeats", str(args.repeats), "--schedule", "interleaved",
            "--name", "noise floor (A/A)"]  # fmt: skip
    for flag, values in (("--precision", args.precision), ("--attention", args.attention), ("--quant", args.quant)):
        if values:
            argv += [flag, ",".join(values)]
    for flag, value in (("--warmup", args.warmup), ("--iters", args.iters), ("--device", args.device)):
        if value is not None:
            argv += [flag, str(value)]
    run_args = parse_command("run", argv)
    run_args.opt = list(args.opt)
    run_args.worker_env = list(args.worker_env)
    run_args.db, run_args.quiet, run_args.print_results = args.db, args.quiet, False
    return run_args


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from engines.base import SpecError
    from engines.study.schema import build_spec
    from tui.commands.run import execute, spec_from_args

    run_args = _run_args(args)
    spec = spec_from_args(run_args)
    if len(spec.runs) != 1:
        labels = "; ".join(r.label() for r in spec.runs)
        raise SpecError(f"noise measures one configuration, these flags give {len(spec.runs)} ({labels}); "
                        "give one value per option")  # fmt: skip
    spec = build_spec({**spec.model_dump(mode="json"), "runs": [spec.runs[0].model_dump(mode="json")] * 2})
    code = execute(spec, run_args)
    if code != 0:
        return code
    return report(Console(), run_args.db, run_args.run_ids)


def report(console, db_path: str | None, run_ids: list[str]) -> int:
    from rich.text import Text

    from store import noise
    from store.db import open_db
    from store.queries import resolve_run
    from store.results import load_result
    from store.safe import LINE, NAME, shown

    db = open_db(db_path, create=False)
    with db.session() as s:
        a, b = (load_result(resolve_run(i, session=s), session=s, telemetry=False) for i in run_ids)
        if a.status != "done" or b.status != "done":
            console.print(Text(f"the A/A runs ended {shown(a.status, NAME)} and {shown(b.status, NAME)}: "
                               "no noise floor stored", style="red"))  # fmt: skip
            return 1
        floors = noise.save(a, b, session=s)
        s.commit()
    if not floors:
        console.print("[red]no cell finished in both runs: no noise floor stored[/]")
        return 1
    host = shown((a.run.get("host") or {}).get("hostname") or "this host", NAME)
    parts = ", ".join(f"{m} ±{row.floor * 100:.1f}%" for m, row in floors.items())
    cells = max(row.cells for row in floors.values())
    console.print(Text(f"noise floor of {host} ({noise.device_kind(a.run.get('device'))}), {shown(a.run['label'], NAME)}, "
                       f"A/A over {cells} cells (95th percentile of |log ratio|): {parts}"))  # fmt: skip
    console.print(Text(f"stored in {shown(db.path, LINE)}; compare uses it for runs on this host"))
    db.close()
    return 0
