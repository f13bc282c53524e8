"""`codebench-tui run`: build a study from flags or a study file, validate it all, then run it."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from typing import Any

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
         "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    m = SIZE.match(text)
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a size (use e.g. 512MiB or 2GiB)")
    size = float(m.group(1)) * UNITS[m.group(2).lower()]
    if not size < 2**62:  # inf from a 400-digit number, or past what any machine has
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is larger than any machine's memory (use e.g. 2GiB)")
    return int(size)


def _list(text: str) -> list[str]:
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values:  # an empty flag must not quietly become the default
        raise argparse.ArgumentTypeError(f"'{text[:40]}' names nothing; give a comma list, e.g. a,b")
    return values


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a value or leave the flag out for the default")
    return text


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE (e.g. --opt n_threads=2)")
    from engines.study.schema import finite_json  # lazy, like the rest of this module's engine imports

    try:
        return key.strip(), finite_json(value)
    except json.JSONDecodeError:
        return key.strip(), value
    except ValueError:  # NaN, Infinity, 1e999: no engine setting means them
        raise argparse.ArgumentTypeError(f"'{text[:60]}' holds a number that is not finite; give a plain number") from None


def _env_var(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text[:60]}' is not KEY=VALUE (e.g. --worker-env OMP_WAIT_POLICY=PASSIVE)")
    return key, value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a study headless and store it",
                       description="Run engines over a batch x input-length x output-length grid.")  # fmt: skip
    p.add_argument("--study", metavar="FILE", help="a study file (JSON) saved from the dashboard or --save-study")
    p.add_argument("--model", type=_text, help="tiny (default), NAME:random (a preset: `codebench-tui models`), a model directory, "
                                   "a .gguf file or an HF id")
    p.add_argument("--engine", type=_list, help="comma list, e.g. hf-generate,hf-pipeline (default hf-generate)")
    p.add_argument("--precision", type=_list, help="comma list: fp32,bf16,fp16")
    p.add_argument("--attention", type=_list,
                   help="comma list: sdpa,eager,sdpa-math,sdpa-efficient,sdpa-flash,flash_attention_2")
    p.add_argument("--quant", type=_list,
                   help="comma list, e.g. f32,q8_0,q4_0 (llama.cpp) or none,int8,nf4,fp4 (HF, compute dtype = --precision)")
    p.add_argument("--spec", type=_list, help="speculative decoding, a list: none,ngram=4,draft=tiny-draft "
                   "(hf-generate; vllm: ngram only); none is added as the matched baseline")
    p.add_argument("--tp", type=_list, help="tensor-parallel sizes, a list: 1,2 (hf-generate, hf-pipeline via "
                   "torchrun; vllm; llama.cpp on GPUs); each run is repeated for each size")
    p.add_argument("--workload", help="prompts: synthetic (stdlib code, default), humaneval, jsonl:FILE "
                   "(a \"text\" field per line) or shared-prefix")
    p.add_argument("--shared-len", help="shared-prefix: shared prompt tokens P, e.g. 1024:16385:x2")
    p.add_argument("--completions", help="shared-prefix: completions N per prompt (the batch axis), e.g. 32:257:x2")
    p.add_argument("--suffix-len", help="shared-prefix: per-completion suffix tokens U (default 32)")
    p.add_argument("--context", help="needle: context lengths in tokens (its --input-len), e.g. 1024:32769:x2")
    p.add_argument("--depth", help="needle: where the fact sits, %% of the haystack, e.g. 0:101:25 (default)")
    p.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="engine option for every run, e.g. --opt n_threads=2 (repeatable)")  # fmt: skip
    p.add_argument("--batch", help="batch sizes, e.g. 1,2,4 or 1:65:x2")
    p.add_argument("--concurrency", help="requests in flight for --engine openai (its batch axis), e.g. 1,2,4")
    p.add_argument("--served-model", help="model name for --engine openai (default: the first of GET /v1/models)")
    g = p.add_argument_group("serving load (server engines: openai, serve:llama.cpp; --concurrency is the batch axis)")
    g.add_argument("--request-rate", help="requests/s per cell, an axis: e.g. 1,2,4,inf (inf: all at once; "
                   "default inf)")
    g.add_argument("--burstiness", type=float, help="gamma shape of the arrival gaps: 1 = Poisson (default), "
                   "below 1 burstier, above 1 steadier")
    g.add_argument("--requests", type=int, help="requests per pass of a cell (default: the concurrency)")
    g.add_argument("--duration", help="seconds per pass of a cell, e.g. 30s or 2m: requests are sent until then "
                   "(those in flight finish); with --requests, whichever comes first")
    g.add_argument("--isl-osl", help="input/output token pairs instead of --input-len x --output-len, "
                   "e.g. 128/128,512/256")
    g.add_argument("--slo", help="per-request limits, e.g. ttft=200ms,itl=50ms,tpot=40ms,e2e=5s: attainment "
                   "and goodput per cell (itl: every gap between two streamed tokens)")
    g.add_argument("--attainment", type=float, help="share of requests that must meet every SLO, e.g. 0.99 "
                   "(default)")
    g.add_argument("--search", choices=("peak-goodput",), help="peak-goodput: per configuration, bisect the "
                   "--concurrency values for the highest one whose SLO attainment holds (needs --slo)")
    g.add_argument("--search-axis", choices=("concurrency", "rate"), help="what --search bisects: the concurrency "
                   "(default) or the --request-rate values, per concurrency")
    p.add_argument("--input-len", help="prompt lengths in tokens, e.g. 32,128 or 32:129:x2")
    p.add_argument("--output-len", help="generated tokens per sequence, e.g. 32")
    p.add_argument("--warmup", type=int, help="untimed minibatches per cell (default 1)")
    p.add_argument("--iters", type=int, help="timed minibatches per repeat (default 2)")
    p.add_argument("--repeats", type=int, help="repeats per cell, each stored (default 3)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--executor", help="where runs execute: local worker processes (default), or a Ray cluster: "
                   "ray://HOST:PORT (its client server) or ray (a cluster started on this host)")
    p.add_argument("--schedule", choices=("interleaved", "sequential"),
                   help="interleaved (default): all runs stay loaded and each cell is measured repeat by repeat "
                   "across them, in rotated order; sequential: one run's grid after another")
    p.add_argument("--worker-env", type=_env_var, action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for every worker, stored with the runs, e.g. OMP_WAIT_POLICY=PASSIVE "
                   "(repeatable; engines otherwise run at their libraries' defaults)")
    p.add_argument("--seed", type=int, help="workload seed (default 0)")
    p.add_argument("--name", help="a name for the study")
    p.add_argument("--cell-timeout", type=float, metavar="S", help="kill a cell's worker after S seconds")
    p.add_argument("--load-timeout", type=float, metavar="S",
                   help="kill a worker that has not loaded its model after S seconds (its run fails)")
    p.add_argument("--cell-mem-limit", type=parse_size, metavar="SIZE",
                   help="address space the worker may add after loading (RLIMIT_AS), e.g. 2GiB")  # fmt: skip
    p.add_argument("--skip-predicted-oom", action="store_true", default=None,
                   help="skip the cells the memory model predicts will not fit this device (or --cell-mem-limit)")  # fmt: skip
    add_quality_args(p)
    p.add_argument("--check", action="store_true",
                   help="also decode 8 prompts greedily and compare tokens with hf-generate fp32 (`check` for more)")  # fmt: skip
    p.add_argument("--save-study", metavar="FILE", help="also write the study to FILE")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan, run nothing")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=run)


def add_quality_args(p: argparse.ArgumentParser, metric_flag: str = "--quality") -> None:
    g = p.add_argument_group("quality (measured with the same engine after the grid)")
    g.add_argument(metric_flag, type=_list, metavar="METRICS", dest="quality",
                   help="perplexity and/or pass@k, e.g. perplexity,pass@k")  # fmt: skip
    g.add_argument("--corpus", help="perplexity corpus: stdlib[:N files] (default stdlib:20), a .txt or .jsonl file")
    g.add_argument("--window", type=int, help="perplexity window in tokens (default 512)")
    g.add_argument("--stride", type=int, help="perplexity stride in tokens (default 256)")
    g.add_argument("--problems", type=int, help="first N HumanEval problems (default all 164)")
    g.add_argument("--samples", type=int, help="completions per problem, n of pass@k (default 1)")
    g.add_argument("--k", type=_list, help="pass@k values, e.g. 1,10 (default 1)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default 0: greedy)")
    g.add_argument("--max-new-tokens", type=int, help="completion length cap (default 128)")


def quality_from_args(args: argparse.Namespace, base: dict | None) -> dict | None:
    fields = {"metrics": args.quality, "corpus": args.corpus, "window": args.window, "stride": args.stride,
              "problems": args.problems, "samples": args.samples, "temperature": args.temperature,
              "max_new_tokens": args.max_new_tokens,
              "k": [int(k) if k.isdigit() else k for k in args.k] if args.k else None}  # fmt: skip
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        return base
    if base is None and "metrics" not in given:
        from tui.errors import UsageError

        raise UsageError("quality options need --quality perplexity,pass@k (or a study file with quality)")
    return {**(base or {}), **given}


def spec_from_args(args: argparse.Namespace):
    from engines.registry import expand
    from engines.study.schema import build_spec, load_study, parse_tp_sizes

    base: dict[str, Any] = load_study(args.study).model_dump() if args.study else {}
    if args.model:
        base["model"] = args.model
    if args.engine or not base.get("runs"):
        runs = expand(args.engine or ["hf-generate"], precision=args.precision, attention=args.attention,
                      quant=args.quant, spec=args.spec)  # fmt: skip
        base["runs"] = [r.model_dump() for r in runs]
    elif args.precision or args.attention or args.quant or args.spec:
        from tui.errors import UsageError

        raise UsageError("--precision/--attention/--quant/--spec need --engine when a study file gives the runs")
    if args.tp:
        tps = parse_tp_sizes(args.tp)
        base["runs"] = [{**run, "tp": t} for run in base["runs"] for t in tps]
    for run in base["runs"]:
        run["options"] = {**run.get("options", {}), **dict(args.opt)}
    if args.concurrency is not None:
        if args.batch is not None:
            from tui.errors import UsageError

            raise UsageError("give --batch or --concurrency, not both (concurrency is the batch axis of openai)")
        args.batch = args.concurrency
    if args.served_model:
        for run in base["runs"]:
            run["options"]["served_model"] = args.served_model
    grid = dict(base.get("grid") or {})
    for key in ("batch", "input_len", "output_len", "shared_len", "suffix_len"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    base["grid"] = grid
    _load_args(args, base, grid)
    _workload_args(args, base, grid)
    timing = dict(base.get("timing") or {})
    for key in ("warmup", "iters", "repeats"):
        if getattr(args, key) is not None:
            timing[key] = getattr(args, key)
    base["timing"] = timing
    if args.worker_env:
        base["worker_env"] = {**base.get("worker_env", {}), **dict(args.worker_env)}
    for key, field in (("device", "device"), ("name", "name"), ("executor", "executor"), ("cell_timeout", "cell_timeout_s"), ("load_timeout", "load_timeout_s"),
                       ("cell_mem_limit", "cell_mem_limit_bytes"), ("schedule", "schedule"),
                       ("skip_predicted_oom", "skip_predicted_oom")):  # fmt: skip
        if getattr(args, key) is not None:
            base[field] = getattr(args, key)
    if args.seed is not None:
        base["workload"] = {**base.get("workload", {}), "seed": args.seed}
    if args.workload is not None:
        kind, _, path = args.workload.partition(":")
        base["workload"] = {**base.get("workload", {}), "kind": kind, "path": path or None}
    base["quality"] = quality_from_args(args, base.get("quality"))
    if args.check:
        base["check"] = base.get("check") or {}
    return build_spec(base)


def _load_args(args: argparse.Namespace, base: dict, grid: dict) -> None:
    """Serving: the load section (checked by the study), and ISL/OSL pairs as the grid's length axes."""
    from engines.base import SpecError as UsageError

    fields = {"request_rate": args.request_rate, "burstiness": args.burstiness, "requests": args.requests,
              "duration_s": args.duration, "slo": args.slo, "attainment": args.attainment, "search": args.search,
              "search_axis": args.search_axis}  # fmt: skip
    given = {k: v for k, v in fields.items() if v is not None}
    if given:
        base["load"] = {**(base.get("load") or {}), **given}
    if args.isl_osl is not None:
        if args.input_len is not None or args.output_len is not None:
            raise UsageError("--isl-osl gives the input and output lengths together: leave out --input-len and "
                             "--output-len")  # fmt: skip
        grid["isl_osl"] = args.isl_osl


def _workload_args(args: argparse.Namespace, base: dict, grid: dict) -> None:
    """shared-prefix: N is the batch axis and input = P + U, so --batch/--input-len would be ambiguous."""
    from engines.base import SpecError as UsageError  # tui.cli's UsageError is another class under python -m tui.cli

    shared = (args.workload or "") == "shared-prefix" or (base.get("workload") or {}).get("kind") == "shared-prefix"
    if args.completions is not None:
        if not shared or args.batch is not None:
            raise UsageError("--completions is the shared-prefix batch axis: use it with --workload shared-prefix, "
                             "without --batch")  # fmt: skip
        grid["batch"] = args.completions
    if shared and args.input_len is not None:
        raise UsageError("--workload shared-prefix takes --shared-len and --suffix-len instead of --input-len")
    if args.workload and args.workload.startswith("jsonl") and ":" not in args.workload:
        raise UsageError("--workload jsonl needs a file: --workload jsonl:FILE")
    needle_axes(args, base, grid)


def needle_axes(args: argparse.Namespace, base: dict, grid: dict) -> None:
    """needle: --context is its input-length axis, --depth its extra axis (checked by the study: 0..100)."""
    from engines.base import SpecError as UsageError

    context, depth = getattr(args, "context", None), getattr(args, "depth", None)
    needle = (args.workload or "") == "needle" or (base.get("workload") or {}).get("kind") == "needle"
    if context is not None:
        if not needle:
            raise UsageError("--context is the needle workload's length axis: add --workload needle, or use --input-len")
        if args.input_len is not None:
            raise UsageError("--context and --input-len are the same axis for --workload needle: give one")
        grid["input_len"] = context
    if depth is not None:
        grid["depth"] = depth


def run(args: argparse.Namespace) -> int:
    if getattr(args, "save_study", None):
        from tui.outputs import check_output, db_in_use

        check_output(args.save_study, db_in_use(args), "--save-study")  # before any work
    return execute(spec_from_args(args), args)


def execute(spec, args: argparse.Namespace) -> int:
    """Validate everything, then run the study with live progress and print its results."""
    from rich.console import Console
    from rich.text import Text

    from engines.harness.preflight import preflight
    from engines.harness.runner import Runner
    from store.db import open_db
    from store.safe import LINE, NAME, shown

    executor = preflight(spec)
    device = executor.device
    console = Console(stderr=False)
    cells = spec.cells()
    quality = f", quality: {', '.join(spec.quality.metrics)}" if spec.quality else ""
    # Text, not a markup string: the model path and the options are the user's.
    plan = Text(f"{len(spec.runs)} run(s) x {len(cells)} cells on {shown(spec.model, LINE)} ({device}){quality}: "
                + "; ".join(shown(r.label(), NAME) for r in spec.runs))  # fmt: skip
    if getattr(args, "save_study", None):
        from tui.outputs import db_in_use, write_atomic

        write_atomic(args.save_study, spec.to_json() + "\n", db_in_use(args), "--save-study")
    from tui.memory_plan import plan_for, plan_lines

    memory = [Text(line) for line in plan_lines(plan_for(spec, device, getattr(args, "db", None)))]
    if getattr(args, "dry_run", False):
        console.print(plan)
        for line in memory:
            console.print(line)
        return 0
    db = open_db(args.db, create=True)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    from tui.progress import HeadlessProgress

    progress = HeadlessProgress(console, spec, enabled=not getattr(args, "quiet", False) and console.is_terminal)
    if getattr(args, "print_results", True):
        console.print(plan)
        for line in memory:
            console.print(line)
    try:
        with progress:
            result = Runner(spec, db, subscribers=[progress.on_event], cancel=cancel, executor=executor).run()
    finally:
        signal.signal(signal.SIGINT, previous)
    from tui.commands.history import show_group

    args.run_ids = result.run_ids
    if getattr(args, "print_results", True):
        show_group(console, db, result.run_ids)
        if len(result.run_ids) > 1:  # one run: show_group's replay already drew it
            from store.results import load_results
            from tui.render import print_speculative

            print_speculative(console, load_results(db, result.run_ids))
        console.print(Text(f"stored in {shown(db.path, LINE)} (group {result.group_id[:8]})"))
    failed = failed_runs(db, result.run_ids)
    db.close()
    if result.status == "cancelled":
        console.print("[yellow]cancelled: finished cells are kept[/]")
        return 130
    for label, error in failed:  # the study ran, but not all of it: say which, and exit 1
        print(f"codebench-tui: run {shown(label, NAME)} failed: {shown(error, LINE)}", file=sys.stderr)
    return 1 if failed else 0


def failed_runs(db, run_ids: list[str]) -> list[tuple[str, str]]:
    from store.models import Run

    with db.session() as s:
        runs = [s.get(Run, i) for i in run_ids]
    return [(r.label, r.error or "") for r in runs if r is not None and r.status == "failed"]


def open_dashboard(args: argparse.Namespace) -> int:
    """No command: the dashboard when it exists and a terminal is attached, else the headless demo."""
    try:
        from tui.app import run_app  # noqa: F401
    except ImportError:
        run_app = None
    if run_app is not None and sys.stdout.isatty():
        return run_app(db_path=args.db)
    demo = build_demo_args(args.db)
    return run(demo)


def build_demo_args(db: str | None) -> argparse.Namespace:
    from tui.parsing import parse_command

    argv = ["run", "--model", "tiny", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2,4", "--input-len", "32,128",
            "--output-len", "32", "--name", "demo"]  # fmt: skip
    return parse_command("run", argv + (["--db", db] if db else []))
