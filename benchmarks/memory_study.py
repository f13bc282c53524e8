"""Issue 19's GPU evidence: does the memory model (engines/models/memory.py) predict seed 001's peaks and OOMs?

    python benchmarks/memory_study.py run --db mem.db              # on the GPU machine (one device call)
    python benchmarks/memory_study.py report --db mem.db [-o mem.md]

`run`: seed 001's attention grid on starcoder2-7b:random, bf16 eager vs sdpa-flash (full causal attention),
batch 2,4,8 x input 4096,8192,16384, output 16, sequential so each run has the card to itself, with the
runner's default OOM handling (a cell larger than an OOM cell is skipped). `report`: per cell, the predicted
peak (stored with the cell, else computed from the run's stored configuration) against the measured one, the
share of cells that ran with the prediction within 10 %, and whether every OOM cell was predicted not to fit.
The targets (issue 19): >= 90 % within 10 %, every OOM predicted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GiB = 2**30


def study(model: str, device: str, quick: bool) -> dict:
    grid = {"batch": [2, 4, 8], "input_len": [4096, 8192, 16384], "output_len": [16]}
    opts = {"sliding_window": "none"}
    if quick:  # a CPU smoke test of this script
        grid, opts = {"batch": [1, 2], "input_len": [16, 32], "output_len": [2]}, {"layers": 1}
    runs = [{"engine": "hf-generate", "precision": "bf16", "attention": a, "options": opts} for a in ("eager", "sdpa-flash")]
    return {"name": "issue 19: seed 001 memory boundary", "model": model, "device": device, "runs": runs, "grid": grid,
            "timing": {"warmup": 1, "iters": 1, "repeats": 2}, "schedule": "sequential"}  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    spec = study(args.model, args.device, args.quick)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    cmd = [sys.executable, "-m", "tui.cli", "run", "--study", f.name, "--db", args.db, "--quiet", *args.extra]
    print("==", " ".join(cmd), flush=True)
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        rc = 124
        print(f"timed out after {args.timeout} s (finished cells are stored)")
    finally:
        os.unlink(f.name)
    print(f"exit {rc} after {time.time() - t0:.0f} s", flush=True)
    return rc


def rows(db_path: str) -> list[dict]:
    """Every cell of every run: status, measured peak, prediction (stored, else computed) and its fit."""
    import sqlite3

    from engines.models.memory import predict
    from engines.registry import get
    from engines.study.grid import Cell
    from engines.study.schema import EngineRun
    from store.metrics import peak_mem

    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    out = []
    query = ("select r.id, r.label, r.model, r.engine, r.config, r.device, r.host, c.batch, c.input_len, c.output_len, "
             "c.status, c.peak_gpu_bytes, c.peak_nvml_bytes, c.peak_rss_bytes, c.metrics, c.error "
             "from cell c join run r on r.id = c.run_id order by r.created_at, c.idx")  # fmt: skip
    for rid, label, model, engine, config, device, host, b, i, o, status, gpu, nvml, rss, metrics, error in con.execute(query):
        metrics = json.loads(metrics or "{}")
        stored = metrics.get("memory") if isinstance(metrics.get("memory"), dict) else None
        gpus = json.loads(host or "{}").get("gpus") or []
        capacity = int(gpus[0]["mem_total"]) if gpus and device.startswith("cuda") else None  # NVML's, as the runner
        if stored and isinstance(stored.get("predicted_bytes"), int):
            predicted, fits = stored["predicted_bytes"], stored.get("fits")
            source = "stored"
        else:
            run = EngineRun.model_validate(json.loads(config))
            p = predict(model, run, Cell(b, i, o), get(engine), device, capacity=capacity)
            predicted, fits = (p.total, p.fits(capacity)) if p else (None, None)
            source = "computed"
        measured = peak_mem({"peak_gpu_bytes": gpu, "peak_nvml_bytes": nvml, "peak_rss_bytes": rss})
        out.append({"run": rid[:8], "label": label, "batch": b, "input": i, "output": o, "status": status,
                    "measured": measured if status == "done" else None, "predicted": predicted, "fits": fits,
                    "source": source, "error": (error or "")[:120]})  # fmt: skip
    con.close()
    return out


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.1f}"


def report(db_path: str, only: str = "") -> str:
    table = [r for r in rows(db_path) if only in r["label"]]
    lines = ["| run | batch | input | status | predicted GiB | measured GiB | measured / predicted - 1 | predicted fit |",
             "|---|---:|---:|---|---:|---:|---:|---|"]  # fmt: skip
    ran = within = 0
    oom = oom_predicted = 0
    for r in table:
        err = None
        if r["measured"] and r["predicted"]:
            err = r["measured"] / r["predicted"] - 1  # as `codebench-tui memory` shows it
            ran += 1
            within += abs(r["predicted"] / r["measured"] - 1) <= 0.10  # the target: predicted within 10 % of measured
        if r["status"] == "oom":
            oom += 1
            oom_predicted += r["fits"] is False
        fit = {True: "fits", False: "OOM", None: "?"}[r["fits"]]
        cols = [f"{r['label']} [{r['run']}]", r["batch"], r["input"], r["status"], _gib(r["predicted"]),
                _gib(r["measured"]), "-" if err is None else f"{err:+.1%}", fit]
        lines.append("| " + " | ".join(map(str, cols)) + " |")
    share = within / ran if ran else 0.0
    lines += ["", f"cells that ran: {ran}; predicted within 10 %: {within} ({share:.0%}; target >= 90 %)",
              f"OOM cells: {oom}; predicted not to fit: {oom_predicted} (target: all)",
              f"verdict: {'PASS' if ran and share >= 0.9 and oom_predicted == oom else 'FAIL'}"]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--db", required=True)
    r.add_argument("--model", default="starcoder2-7b:random")
    r.add_argument("--device", default="cuda")
    r.add_argument("--timeout", type=int, default=520)
    r.add_argument("--quick", action="store_true", help="a one-layer model on a tiny grid (CPU smoke test)")
    r.add_argument("extra", nargs="*", help="more `run` options after --, e.g. -- --skip-predicted-oom")
    p = sub.add_parser("report")
    p.add_argument("--db", required=True)
    p.add_argument("-o", "--output")
    p.add_argument("--only", default="", help="runs whose label contains this, e.g. sliding_window=none")
    args = ap.parse_args()
    if args.cmd == "run":
        return cmd_run(args)
    text = report(args.db, args.only)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
