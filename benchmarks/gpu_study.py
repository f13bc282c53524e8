"""Seed 001's GPU study as codebench runs, on an architecture preset with random weights.

    python benchmarks/gpu_study.py run --db results.db            # on the GPU machine
    python benchmarks/gpu_study.py report --db results.db -o results.md

Three studies, each one `codebench-tui run --study FILE` (one run group each):
  attention  bf16 eager vs sdpa-flash over batch 2,4,8 x context 4096,8192,16384. StarCoder2's
             4096-token sliding window cannot be applied by PyTorch's flash kernel (it takes no mask
             on CUDA), so both runs use `sliding_window=none` (full causal attention, the same maths
             for both kernels); a third run, sdpa with the published window, shows the real model.
  precision  fp32 vs bf16 (sdpa) over batch 2,4,8 x context 4096.
  quant      bf16 vs bitsandbytes int8 (fp16) vs nf4 with fp16 and with fp32 compute: memory and speed.
OOM cells are recorded as OOM and the sweep goes on. `--quick` runs the same studies on a
one-layer model with a tiny grid (a CPU smoke test of this script). `report` writes the Markdown:
codebench's own export of each group plus an efficiency table (weights, peak memory, J/token,
decode bandwidth as a share of the GPU's peak, throttling) from the stored per-minibatch figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.measure.roofline import cell_efficiency  # noqa: E402


def run_spec(engine: str, precision: str, attention: str = "sdpa", quant: str | None = None, **options) -> dict:
    return {"engine": engine, "precision": precision, "attention": attention, "quant": quant, "options": options}


def studies(model: str, quick: bool) -> list[dict]:
    small = {"layers": 1} if quick else {}
    full = {"sliding_window": "none"}
    timing = {"warmup": 1, "iters": 1, "repeats": 2}
    grid_a = {"batch": [2, 4, 8], "input_len": [4096, 8192, 16384], "output_len": [16]}
    grid_b = {"batch": [2, 4, 8], "input_len": [4096], "output_len": [16]}
    grid_c = {"batch": [1, 8], "input_len": [512, 2048], "output_len": [32]}
    if quick:
        grid_a = {"batch": [1, 2], "input_len": [16, 32], "output_len": [4]}
        grid_b = grid_c = {"batch": [1, 2], "input_len": [16], "output_len": [4]}
        timing = {"warmup": 0, "iters": 1, "repeats": 1}
    hf = "hf-generate"
    found = [
        {"name": "seed001 attention: bf16 eager vs sdpa-flash (full causal attention)", "grid": grid_a,
         "runs": [run_spec(hf, "bf16", "eager", **full, **small), run_spec(hf, "bf16", "sdpa-flash", **full, **small),
                  run_spec(hf, "bf16", "sdpa", **small)]},
        {"name": "seed001 precision: fp32 vs bf16 (sdpa)", "grid": grid_b,
         "runs": [run_spec(hf, "fp32", **small), run_spec(hf, "bf16", **small)]},
        {"name": "seed001 quantization: bf16 vs int8 vs nf4 (fp16 and fp32 compute)", "grid": grid_c,
         "runs": [run_spec(hf, "bf16", **small), run_spec(hf, "fp16", quant="int8", **small),
                  run_spec(hf, "fp16", quant="nf4", **small), run_spec(hf, "fp32", quant="nf4", **small)]},
    ]  # fmt: skip
    return [{**s, "timing": timing} for s in found]


def cmd_run(args: argparse.Namespace) -> int:
    model = args.model
    status = 0
    limits = [float(t) for t in args.timeouts.split(",")] if args.timeouts else []
    for n, study in enumerate(studies(model, args.quick)):
        if args.only and not any(k in study["name"] for k in args.only):
            continue
        timeout = limits[n] if n < len(limits) else args.study_timeout
        spec = {"name": study["name"], "model": model, "device": args.device, "runs": study["runs"],
                "grid": study["grid"], "timing": study["timing"]}  # fmt: skip
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        cmd = [sys.executable, "-m", "tui.cli", "run", "--study", f.name, "--db", args.db, "--quiet"]
        t0 = time.time()
        print(f"== {study['name']}: {' '.join(cmd)}", flush=True)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, text=True, capture_output=True)
            out = proc.stdout + proc.stderr
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            out, rc = f"timed out after {timeout:g} s (cells finished so far are stored)", 124
        tail = "\n".join(out.strip().splitlines()[-8:])
        print(f"   exit {rc} after {time.time() - t0:.0f} s\n{tail}", flush=True)
        status = status or rc
        os.unlink(f.name)
    return status


# --- report ---------------------------------------------------------------------------


def _groups(db: str) -> list[tuple[str, str, list[str]]]:
    con = sqlite3.connect(db)
    try:
        groups = con.execute("select id, coalesce(name, '') from run_group order by created_at").fetchall()
        out = []
        for gid, name in groups:
            ids = [r[0] for r in con.execute("select id from run where group_id=? order by created_at", (gid,))]
            if ids:
                out.append((gid, name, ids))
        return out
    finally:
        con.close()


def _fmt(v, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}{unit}"


def efficiency_table(db: str, run_ids: list[str]) -> str:
    con = sqlite3.connect(db)
    lines = ["| run | weights GiB | batch | input | output | status | decode tok/s | peak GPU GiB | J/token | "
             "decode GB/s | of peak | throttle | compile s |", "|" + "---|" * 13]  # fmt: skip
    try:
        for rid in run_ids:
            label, runtime = con.execute("select label, runtime from run where id=?", (rid,)).fetchone()
            rt = json.loads(runtime or "{}")
            wb = rt.get("weight_bytes")
            for b, i, o, st, dtps, peak, reps, metrics in con.execute(
                "select batch, input_len, output_len, status, decode_tps, peak_gpu_bytes, repeats, metrics "
                "from cell where run_id=? order by idx", (rid,)):  # fmt: skip
                eff = cell_efficiency(json.loads(reps or "[]"))
                last = (json.loads(metrics or "{}").get("last_extra") or {})
                share = eff.get("bw_share")
                lines.append(
                    f"| {label} | {_fmt(wb / 2**30 if wb else None, digits=3)} | {b} | {i} | {o} | {st} | "
                    f"{_fmt(dtps)} | {_fmt(peak / 2**30 if peak else None)} | {_fmt(eff.get('j_per_token'))} | "
                    f"{_fmt(eff['achieved_bw'] / 1e9 if eff.get('achieved_bw') else None, digits=4)} | "
                    f"{'-' if share is None else f'{share:.0%}'} | {','.join(eff.get('throttle', [])) or '-'} | "
                    f"{_fmt(last.get('compile_s'))} |"
                )
    finally:
        con.close()
    return "\n".join(lines) + "\n"


def cmd_report(args: argparse.Namespace) -> int:
    parts = [f"# {args.title}\n"]
    for gid, name, ids in _groups(args.db):
        proc = subprocess.run([sys.executable, "-m", "tui.cli", "export", *ids, "--format", "md", "--db", args.db],
                              cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        body = proc.stdout.replace("# codebench-tui results\n", "", 1).strip()
        parts += [f"## {name or gid[:8]}\n", body + "\n", "**Efficiency** (per cell, medians over timed minibatches; "
                  "J/token from the NVML energy counter; decode GB/s = bytes one decode step must read / step time)\n",
                  efficiency_table(args.db, ids)]  # fmt: skip
    text = "\n".join(parts)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_study.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--db", required=True)
    r.add_argument("--model", default="starcoder2-7b:random")
    r.add_argument("--device", default="cuda")
    r.add_argument("--quick", action="store_true", help="one layer, tiny grid: a smoke test of this script")
    r.add_argument("--only", nargs="*", help="run only studies whose name contains one of these words")
    r.add_argument("--study-timeout", type=float, default=540, help="seconds per study")
    r.add_argument("--timeouts", help="seconds per study in order, e.g. 230,130,200 (a device call has 600)")
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("--db", required=True)
    p.add_argument("-o", "--output")
    p.add_argument("--title", default="codebench-tui GPU study (seed 001 shapes)")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
