"""`codebench-tui microbench attention`: standard vs Hydragen attention alone, in a worker subprocess.

This process never imports torch: engines.adapters.hf.microbench runs in a child and prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent.parent)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("microbench", help="micro-benchmarks of single operations (attention)",
                       description="Time one operation alone, outside any model.")  # fmt: skip
    p.add_argument("op", choices=["attention"], help="attention: standard vs Hydragen shared-prefix attention")
    p.add_argument("--batch", default="1,8,32", help="sequences sharing the prefix, e.g. 32:257:x2 (default 1,8,32)")
    p.add_argument("--prefix-len", default="256,1024", help="shared prefix tokens, e.g. 1024:16385:x2")
    p.add_argument("--suffix-len", default="0,64", help="per-sequence suffix tokens, e.g. 0:513:64")
    p.add_argument("--query-len", type=int, default=1, help="query tokens per sequence (1: a decode step)")
    p.add_argument("--heads", type=int, default=32, help="query heads (default 32, CodeLlama-7B)")
    p.add_argument("--kv-heads", type=int, help="KV heads (default: = heads)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: fp32 on CPU, fp16 on CUDA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed calls per point; the median is shown")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", metavar="FILE", help="also write the header and points as JSON lines to FILE")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before the worker is stopped")
    p.set_defaults(func=microbench)


def _args(args: argparse.Namespace) -> dict:
    from engines.base import SpecError as UsageError  # tui.cli's UsageError is another class under python -m tui.cli
    from engines.measure.hardware import resolve_device
    from engines.study.grid import parse_axis

    device = resolve_device(args.device)
    kv = args.kv_heads or args.heads
    if args.heads < 1 or kv < 1 or args.heads % kv:
        raise UsageError(f"--heads {args.heads} must be a positive multiple of --kv-heads {kv}")
    for name in ("query_len", "head_dim", "iters"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise UsageError("--warmup must be >= 0")
    return {
        "op": args.op, "device": device, "dtype": args.dtype or ("fp16" if device.startswith("cuda") else "fp32"),
        "batch": parse_axis(args.batch, "batch"), "prefix_len": parse_axis(args.prefix_len, "prefix-len"),
        "suffix_len": parse_axis(args.suffix_len, "suffix-len", minimum=0), "query_len": args.query_len,
        "heads": args.heads, "kv_heads": kv, "head_dim": args.head_dim, "warmup": args.warmup, "iters": args.iters,
        "threads": args.threads,
    }  # fmt: skip


def table(head: dict, points: list[dict], a: dict):
    from store.tables import Table, fmt

    rows, styles = [], []
    for pt in points:
        std, hyd = pt.get("standard_ms"), pt.get("hydragen_ms")
        both = isinstance(std, float) and isinstance(hyd, float)
        speedup = std / hyd if both and hyd > 0 else None
        show = lambda v: "OOM" if v == "oom" else fmt(v)  # noqa: E731
        rows.append([str(pt["batch"]), str(pt["prefix"]), str(pt["suffix"]), show(std), show(hyd),
                     "-" if speedup is None else f"{speedup:.2f}×", f"{pt['max_abs_diff']:.1e}" if "max_abs_diff" in pt else "-"])  # fmt: skip
        good = speedup is not None and speedup > 1.005
        styles.append(["done"] * 3 + ["oom" if std == "oom" else "done", "oom" if hyd == "oom" else "done",
                       "better" if good else ("worse" if speedup else "done"), "done"])  # fmt: skip
    title = (f"attention, one step of {a['query_len']} query token(s): {a['heads']} heads / {a['kv_heads']} KV heads "
             f"x {a['head_dim']}, {head.get('dtype')} on {head.get('gpu') or head.get('device')}")  # fmt: skip
    notes = [f"median of {a['iters']} calls after {a['warmup']} warm-up; standard: SDPA over per-sequence copies of "
             "the prefix; hydragen: prefix read once (batched queries) + suffix, merged by log-sum-exp",
             f"torch {head.get('torch')}, {head.get('threads')} CPU threads"]  # fmt: skip
    return Table(title, ["batch", "prefix", "suffix", "standard ms", "hydragen ms", "speed-up", "max |diff|"], rows,
                 notes, styles)  # fmt: skip


def microbench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from store.safe import LINE, shown
    from tui.outputs import check_output, db_in_use, write_atomic
    from tui.render import rich_table

    if args.json:
        check_output(args.json, db_in_use(args), "--json")  # before the benchmark, and again when writing
    a = _args(args)
    env = {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
    console, err = Console(), Console(stderr=True)
    proc = subprocess.Popen([sys.executable, "-m", "engines.adapters.hf.microbench", json.dumps(a)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip
    head: dict = {}
    points: list[dict] = []
    total = len(a["batch"]) * len(a["prefix_len"]) * len(a["suffix_len"])
    timer = threading.Timer(args.timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            obj = json.loads(line)
            if "header" in obj:
                head = obj["header"]
            else:
                points.append(obj)
                if err.is_terminal:
                    err.print(f"[dim]{len(points)}/{total} b={obj['batch']} P={obj['prefix']} U={obj['suffix']}[/]")
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        return 130
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    if points:
        console.print(rich_table(table(head, points, a)))
    if args.json:
        lines = "".join(json.dumps(o) + "\n" for o in [{"header": head, "args": a}, *points])
        write_atomic(args.json, lines, db_in_use(args), "--json")
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
        why = f"stopped after --timeout {args.timeout:g} s" if proc.returncode == -9 else tail
        err.print(Text(f"codebench-tui: microbenchmark worker failed: {shown(why, LINE)}"))  # stderr: never markup
        return 1
    return 0
