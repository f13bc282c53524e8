"""Decode speed of each HF configuration codebench offers, as a share of the memory-bandwidth roofline.

    python benchmarks/gpu_roofline.py --db roofline.db        # on the GPU machine

codellama-7b:random in bf16, batch 1, input 512, output 128 (the issue's setting). First the device's
bandwidth is measured (`python -m engines.measure.probe`, cached where the engines read it); the roofline is
that bandwidth over the bytes one decode step must read (all weights once, plus the KV cache at the
mean context). Each configuration is one run of one codebench study; warm-up uses the measured shape
(two minibatches: compilation and CUDA-graph recording happen there), so the timed minibatches are
steady state, and the compile time is reported apart. Target: the fastest configuration >= 60%.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.measure.roofline import cell_efficiency  # noqa: E402

CONFIGS = [  # (label, engine, attention, options)
    ("generate sdpa (dynamic cache)", "hf-generate", "sdpa", {}),
    ("generate sdpa, static cache", "hf-generate", "sdpa", {"cache": "static"}),
    ("generate sdpa, static cache + compile reduce-overhead", "hf-generate", "sdpa",
     {"cache": "static", "compile": "reduce-overhead"}),
    ("torch-compile loop, static cache, no compile", "torch-compile", "sdpa", {"compile": "off"}),
    ("torch-compile loop, static cache + compile reduce-overhead", "torch-compile", "sdpa",
     {"compile": "reduce-overhead"}),
]  # fmt: skip


def probe(device: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "engines.measure.probe", "--device", device], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_roofline.py")
    ap.add_argument("--db", required=True)
    ap.add_argument("--model", default="codellama-7b:random")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="configuration labels containing one of these words")
    ap.add_argument("--opt", action="append", default=[], help="extra KEY=VALUE option for every run (e.g. layers=1)")
    ap.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    args = ap.parse_args(argv)

    peak = probe(args.device) if args.device.startswith("cuda") else {}
    extra_opts = dict(kv.split("=", 1) for kv in args.opt)
    extra_opts = {k: json.loads(v) if v.lstrip("-").isdigit() else v for k, v in extra_opts.items()}
    configs = [c for c in CONFIGS if not args.only or any(w in c[0] for w in args.only)]
    runs = [{"engine": e, "precision": args.precision, "attention": a, "options": {**o, **extra_opts}}
            for _, e, a, o in configs]  # fmt: skip
    spec = {"name": f"roofline {args.model} b{args.batch} in{args.input_len} out{args.output_len}",
            "model": args.model, "device": args.device, "runs": runs,
            "grid": {"batch": [args.batch], "input_len": [args.input_len], "output_len": [args.output_len]},
            "timing": {"warmup": args.warmup, "iters": 1, "repeats": args.repeats}}  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "run", "--study", f.name, "--db", args.db, "--quiet"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    Path(f.name).unlink()
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    con = sqlite3.connect(args.db)
    gid = con.execute("select id from run_group order by created_at desc limit 1").fetchone()[0]
    rows = []
    for (label_cfg, *_), (rid, label, runtime, status, error) in zip(configs, con.execute(
            "select id, label, runtime, status, error from run where group_id=? order by created_at", (gid,))):  # fmt: skip
        cell = con.execute("select status, decode_tps, tokens_per_s, ttft_s, repeats, metrics, error from cell "
                           "where run_id=?", (rid,)).fetchone()  # fmt: skip
        row = {"config": label_cfg, "label": label, "status": cell[0] if cell else status,
               "error": (cell[6] if cell else error or "").splitlines()[:1]}  # fmt: skip
        if cell and cell[0] == "done":
            eff = cell_efficiency(json.loads(cell[4]))
            last = json.loads(cell[5] or "{}").get("last_extra") or {}
            row.update(decode_tps=cell[1], tokens_per_s=cell[2], ttft_s=cell[3], roofline_tps=eff.get("roofline_tps"),
                       share=eff.get("bw_share"), achieved_gbs=(eff.get("achieved_bw") or 0) / 1e9,
                       compile_s=last.get("compile_s"), j_per_token=eff.get("j_per_token"),
                       throttle=eff.get("throttle"), peak_source=json.loads(runtime or "{}").get("peak_bw_source"))  # fmt: skip
        rows.append(row)
    con.close()
    print(f"\n{args.model} {args.precision}, batch {args.batch}, input {args.input_len}, output {args.output_len}; "
          f"study took {time.time() - t0:.0f} s")  # fmt: skip
    if peak:
        print(f"{peak['device']}: copy {peak['copy_bw'] / 1e9:.0f} GB/s, read {peak['read_bw'] / 1e9:.0f} GB/s, "
              f"datasheet {(peak.get('datasheet_bw') or 0) / 1e9:.0f} GB/s; roofline peak = {peak['peak_bw'] / 1e9:.0f} GB/s")  # fmt: skip
    print(f"{'configuration':<58} {'decode tok/s':>12} {'roofline':>9} {'share':>6} {'compile s':>9}")
    for r in rows:
        if r["status"] != "done":
            print(f"{r['config']:<58} {r['status']}: {' '.join(r['error'])[:60]}")
            continue
        share = "-" if r["share"] is None else f"{r['share']:.0%}"
        comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        roof = "-" if r["roofline_tps"] is None else f"{r['roofline_tps']:.0f}"
        print(f"{r['config']:<58} {r['decode_tps'] or 0:>12.1f} {roof:>9} {share:>6} {comp:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, "rows": rows, "spec": spec}, indent=1) + "\n")
    best = max((r["share"] or 0 for r in rows if r["status"] == "done"), default=0)
    print(f"fastest configuration: {best:.0%} of the roofline (target >= 60%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
