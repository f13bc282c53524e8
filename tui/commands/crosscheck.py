"""`codebench-tui crosscheck`: the same cells through codebench and through the engine's own benchmark tool,
interleaved round by round; the tool's output is imported like any other (store.peers), and the ratio per cell
is shown with its interval over the rounds (store.crosscheck).

- llama.cpp: codebench's llama.cpp engine against llama-bench (pp at batch 1, tg at the cell's depth) and
  llama-batched-bench (every batch size), on the same GGUF, each tool at its own default settings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from tui.commands.run import _option, _text

ENGINES = ("llama.cpp",)
# codebench's llama.cpp options and llama-bench's / llama-batched-bench's flags for them
LLAMA_FLAGS = {"n_threads": "-t", "n_batch": "-b", "n_ubatch": "-ub", "n_gpu_layers": "-ngl", "type_k": "-ctk",
               "type_v": "-ctv"}  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crosscheck", help="codebench against the engine's own benchmark tool on the same cells",
                       description="Run the same cells through codebench and through the engine's own tool "
                                   "(llama.cpp: llama-bench and llama-batched-bench), interleaved, import the tool's "
                                   "output and show codebench ÷ tool per cell with its 95% interval over the rounds.")  # fmt: skip
    p.add_argument("--engine", required=True, choices=ENGINES)
    p.add_argument("--model", default="tiny", type=_text)
    p.add_argument("--quant", default="f32", help="GGUF type codebench converts to (default f32)")
    p.add_argument("--batch", default="1,2,4", help="batch sizes (default 1,2,4)")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--output-len", type=int, default=32, help="generated tokens (default 32)")
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
                                ("--rounds", args.rounds, 1, 100), ("--repeats", args.repeats, 1, 100)):  # fmt: skip
        if not lo <= value <= hi:
            raise SpecError(f"{name} must be from {lo} to {hi}, got {value}")
    if args.rounds < 2:
        pass  # one round: ratios without an interval, said in the table
    unknown = [k for k, _ in args.opt if k not in LLAMA_FLAGS and k != "flash_attn"]
    if unknown:
        raise SpecError(f"crosscheck --opt {unknown[0]!r}: the tools have no flag for it; use one of "
                        f"{', '.join([*LLAMA_FLAGS, 'flash_attn'])}")  # fmt: skip
    if args.json:
        from tui.outputs import check_output, db_in_use

        check_output(args.json, db_in_use(args), "--json")
    return batches


def _tool_flags(opts: list[tuple[str, Any]]) -> list[str]:
    out = []
    for key, value in opts:
        if key == "flash_attn":
            out += ["-fa", {"auto": "auto", "on": "1", "off": "0", True: "1", False: "0"}.get(value, str(value))]
        else:
            out += [LLAMA_FLAGS[key], str(value)]
    return out


def _codebench(args: argparse.Namespace, batches: list[int], round_no: int) -> str:
    from tui.commands.run import execute, spec_from_args
    from tui.parsing import parse_command

    argv = ["run", "--model", args.model, "--engine", "llama.cpp", "--quant", args.quant, "--batch",
            ",".join(map(str, batches)), "--input-len", str(args.input_len), "--output-len", str(args.output_len),
            "--warmup", "1", "--iters", "1", "--repeats", str(args.repeats), "--name", f"crosscheck round {round_no + 1}"]  # fmt: skip
    run_args = parse_command("run", argv)
    run_args.opt, run_args.db, run_args.quiet, run_args.print_results = list(args.opt), args.db, args.quiet, False
    code = execute(spec_from_args(run_args), run_args)
    if code != 0:
        raise RuntimeError(f"codebench's round {round_no + 1} ended with exit code {code}")
    return run_args.run_ids[0]


def _gguf(db_path: Any, run_id: str) -> Path:
    from store.db import open_db
    from store.queries import resolve_run

    db = open_db(db_path, create=False)
    try:
        with db.session() as s:
            runtime = resolve_run(run_id, session=s).runtime or {}
    finally:
        db.close()
    return Path(runtime["gguf"])


def _peers(args: argparse.Namespace, gguf: Path, batches: list[int], out: Path) -> list[Path]:
    from engines.adapters.llamacpp import peer_bench

    flags = _tool_flags(args.opt)
    rep, n_in, n_out = args.repeats, str(args.input_len), str(args.output_len)
    return [peer_bench.llama_bench(gguf, out / "pp.json", n_prompt=n_in, n_gen="0", repetitions=rep, extra=flags),
            peer_bench.llama_bench(gguf, out / "tg.json", n_prompt="0", n_gen=n_out, repetitions=rep,
                                   extra=["-d", n_in, *flags]),
            peer_bench.batched_bench(gguf, out / "batched.jsonl", pp=n_in, tg=n_out, pl=",".join(map(str, batches)),
                                     extra=flags)]  # fmt: skip


def _import(db_path: Any, path: Path, model: str) -> str:
    from store.db import open_db
    from store.export import import_export
    from store.importdoc import read_export

    doc = read_export(path, {"model": model})
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

    batches = _check(args)
    console = Console()
    rounds: list[dict[str, str]] = []
    gguf: Path | None = None
    with tempfile.TemporaryDirectory(prefix="codebench-crosscheck-") as tmp:
        for r in range(args.rounds):  # codebench first in even rounds, the tools first in odd ones
            ids: dict[str, str] = {}
            out = Path(tmp) / f"round{r}"
            out.mkdir()
            for side in (("codebench", "tools") if r % 2 == 0 else ("tools", "codebench")):
                if side == "codebench":
                    ids["codebench"] = _codebench(args, batches, r)
                    gguf = gguf or _gguf(args.db, ids["codebench"])
                else:
                    assert gguf is not None  # round 0 ran codebench first
                    for name, path in zip(("pp", "tg", "batched"), _peers(args, gguf, batches, out)):
                        ids[name] = _import(args.db, path, args.model)
            rounds.append(ids)
            if not args.quiet:
                console.print(f"round {r + 1} of {args.rounds} done")
    return report(console, args, batches, rounds)


def pairings(results: dict[str, Any], rounds: list[dict[str, str]], batches: list[int], n_in: int, n_out: int) -> list:
    from store.crosscheck import Pairing, find, peer, prompt_tps

    tg = Pairing("decode tok/s", f"b=1 in={n_in} out={n_out}", f"llama-bench tg{n_out} -d {n_in}")
    pp = Pairing("prompt tok/s", f"b=1 in={n_in}", f"llama-bench pp{n_in}")
    batched = {b: (Pairing("decode tok/s", f"b={b} in={n_in} out={n_out}", "llama-batched-bench"),
                   Pairing("prompt tok/s", f"b={b} in={n_in}", "llama-batched-bench")) for b in batches}  # fmt: skip
    for ids in rounds:
        ours = results[ids["codebench"]].cells
        one = find(ours, 1, n_in, n_out)
        tg.add((one or {}).get("decode_tps"), peer(results[ids["tg"]].cells[0], "avg_ts"))
        pp.add(prompt_tps(one), peer(results[ids["pp"]].cells[0], "avg_ts"))
        for b, (dec, pro) in batched.items():
            cell = find(ours, b, n_in, n_out)
            theirs = find(results[ids["batched"]].cells, b, n_in, n_out)
            dec.add((cell or {}).get("decode_tps"), peer(theirs, "speed_tg"))
            pro.add(prompt_tps(cell), peer(theirs, "speed_pp"))
    out = ([tg, pp] if 1 in batches else []) + [p for pair in batched.values() for p in pair]
    for p in out:
        if p.figure == "prompt tok/s":  # codebench's TTFT also samples the first token
            p.why = "codebench's prompt time includes the first token's sampling"
    return out


def report(console: Any, args: argparse.Namespace, batches: list[int], rounds: list[dict[str, str]]) -> int:
    from rich.table import Table
    from rich.text import Text

    from store.crosscheck import HEADERS, table_rows
    from store.db import open_db
    from store.results import load_results
    from tui.outputs import db_in_use, write_atomic

    db = open_db(args.db, create=False)
    ids = [i for r in rounds for i in r.values()]
    results = dict(zip(ids, load_results(db, ids)))
    db.close()
    pairs = pairings(results, rounds, batches, args.input_len, args.output_len)
    table = Table(title=f"codebench ÷ llama.cpp's own tools, {args.model} {args.quant}, {len(rounds)} round(s)")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("figure", "cell", "tool", "verdict") else "right")
    for row in table_rows(pairs, lambda v: "-" if v is None else f"{v:,.1f}"):
        table.add_row(*(Text(x) for x in row))
    console.print(table)
    console.print(Text(f"runs stored: codebench {', '.join(r['codebench'][:8] for r in rounds)}; the tools' output "
                       "imported beside them"))  # fmt: skip
    if args.json:
        write_atomic(args.json, json.dumps([p.summary() for p in pairs], indent=1) + "\n", db_in_use(args), "--json")
    return 0
