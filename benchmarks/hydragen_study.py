"""Seed 003 (Hydragen) on the GPU, issue 8 part 8: end-to-end study, attention microbenchmark, report.

    python benchmarks/hydragen_study.py run --db hydragen.db --out docs/results       # on the GPU machine
    python benchmarks/hydragen_study.py report --db hydragen.db -o docs/results/hydragen.md
    python benchmarks/hydragen_study.py run --quick --db /tmp/h.db --out /tmp/h     # CPU smoke test on tiny

`run` is one `codebench-tui run` (one run group) on codellama-7b:random in fp16: hf-generate
(no sharing, the FlashAttention-style baseline: SDPA picks the flash kernel), hf-noshare (no
sharing through the same decode loop as the next three), hf-prefix-kv, hydragen and noattention over N = 32..256 completions x P = 1024..16384 shared tokens, U = 32,
G = 128; OOM cells are recorded and larger cells skipped. Then `microbench attention` over the
same N x P with U = 0..512 step 128 (seed 003 Figure 5), saved as JSON lines.

`report` checks the issue's targets per cell with P >= 4096: hydragen >= 80% of noattention's
tokens/s, and >= 3x the no-sharing baseline wherever the baseline ran; where the baseline ran out
of memory and hydragen did not, the table says so. No torch needed for the report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENGINES = ("hf-generate", "hf-noshare", "hf-prefix-kv", "hydragen", "noattention", "vllm")
TARGET_P, TARGET_BOUND, TARGET_BASE = 4096, 0.8, 3.0


def study(quick: bool, vllm: bool = False) -> dict:
    if quick:
        model, precision, device = "tiny", "fp32", "cpu"
        grid = {"batch": [2, 4], "shared_len": [32, 64], "suffix_len": [8], "output_len": [4]}
        timing = {"warmup": 0, "iters": 1, "repeats": 1}
    else:
        model, precision, device = "codellama-7b:random", "fp16", "cuda"
        grid = {"batch": [32, 64, 128, 256], "shared_len": [1024, 2048, 4096, 8192, 16384], "suffix_len": [32],
                "output_len": [128]}  # fmt: skip
        timing = {"warmup": 1, "iters": 1, "repeats": 2}
    runs = [{"engine": e, "precision": precision} | ({"attention": "sdpa"} if e == "hf-generate" else {}) for e in ENGINES[:5]]
    if vllm:  # seed 003's fourth system: vLLM with automatic prefix caching
        runs.append({"engine": "vllm", "precision": precision, "options": {"enable_prefix_caching": True}})
    return {"name": "seed003 hydragen: shared prefix", "model": model, "device": device, "runs": runs, "grid": grid,
            "timing": timing, "workload": {"kind": "shared-prefix"}, "cell_timeout_s": 120 if quick else 900}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = study(args.quick, args.vllm)
    study_file = out / "hydragen_study.json"
    study_file.write_text(json.dumps(spec, indent=2) + "\n")
    cli = [sys.executable, "-m", "tui.cli"]
    rc = subprocess.call([*cli, "run", "--study", str(study_file), "--db", args.db, "--quiet"], cwd=ROOT)
    g = spec["grid"]
    mb = ["microbench", "attention", "--batch", ",".join(map(str, g["batch"])),
          "--prefix-len", ",".join(map(str, g["shared_len"])), "--device", spec["device"],
          "--json", str(out / "hydragen_microbench.jsonl")]  # fmt: skip
    mb += ["--suffix-len", "0,8", "--heads", "4", "--head-dim", "16", "--iters", "2"] if args.quick else [
        "--suffix-len", "0:513:128", "--heads", "32", "--head-dim", "128", "--dtype", "fp16", "--iters", "10"]
    rc2 = subprocess.call([*cli, *mb], cwd=ROOT)
    return rc or rc2


def _cells(db_path: str) -> tuple[dict, dict]:
    """{engine: {(N, P, U, G): cell}} of the newest group in the database, and that group's spec."""
    from store.db import open_db
    from store.queries import list_runs
    from store.results import load_result

    db = open_db(db_path, create=False)
    with db.session() as s:
        runs = list_runs(session=s)
        if not runs:
            raise SystemExit(f"no runs in {db_path}")
        group = runs[0].group_id
        results = [load_result(r, session=s, telemetry=False) for r in reversed(runs) if r.group_id == group]
    by_engine: dict = {}
    for r in results:
        for c in r.cells:
            p = c.get("params") or {}
            by_engine.setdefault(r.run["engine"], {})[(c["batch"], p.get("shared_len"), p.get("suffix_len"), c["output_len"])] = c
    return by_engine, results[0].run.get("spec") or {}


def report(args: argparse.Namespace) -> int:
    from store.tables import fmt

    cells, spec = _cells(args.db)
    keys = sorted({k for e in cells.values() for k in e})
    show = lambda c: "-" if c is None else (fmt(c["tokens_per_s"]) if c["status"] == "done" else c["status"].upper())  # noqa: E731
    lines = [f"# Hydragen (seed 003) on {spec.get('model')}", "",
             "tokens/s per engine; ratios of hydragen to noattention (the bound) and to hf-generate (no sharing). "
             f"Targets at P >= {TARGET_P}: hydragen >= {TARGET_BOUND:.0%} of the bound, >= {TARGET_BASE:g}x no sharing.", "",
             "| N | P | U | G | " + " | ".join(ENGINES) + " | hyd/bound | hyd/base | hyd/noshare | same tokens | target |",
             "|" + "---|" * (9 + len(ENGINES))]  # fmt: skip
    failed = 0
    for k in keys:
        row = {e: cells.get(e, {}).get(k) for e in ENGINES}
        tps = {e: (c["tokens_per_s"] if c and c["status"] == "done" else None) for e, c in row.items()}
        hyd, bound, base = tps["hydragen"], tps["noattention"], tps["hf-generate"]
        r_bound = hyd / bound if hyd and bound else None
        r_base = hyd / base if hyd and base else None
        r_noshare = hyd / tps["hf-noshare"] if hyd and tps["hf-noshare"] else None
        ref = ((row["hydragen"] or {}).get("metrics") or {}).get("reference") or {}
        same = {True: "yes", False: "NO"}.get(ref.get("identical"), "-")
        verdict = "-"
        if k[1] >= TARGET_P and hyd:
            ok = (r_bound is not None and r_bound >= TARGET_BOUND) and (r_base is None or r_base >= TARGET_BASE)
            verdict = "pass" if ok else "FAIL"
            if base is None and row["hf-generate"] and row["hf-generate"]["status"] in ("oom", "skipped"):
                verdict += " (baseline OOM, hydragen ran)"
            failed += not ok
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(show(row[e]) for e in ENGINES)
                     + f" | {'-' if r_bound is None else f'{r_bound:.0%}'} | {'-' if r_base is None else f'{r_base:.2f}x'}"
                     + f" | {'-' if r_noshare is None else f'{r_noshare:.2f}x'}"
                     + f" | {same} | {verdict} |")  # fmt: skip
    mb = Path(args.db).with_name("hydragen_microbench.jsonl") if not args.microbench else Path(args.microbench)
    if mb.exists():
        rows = [json.loads(x) for x in mb.read_text().splitlines()]
        head = rows[0].get("header", {})
        lines += ["", f"## Attention alone ({head.get('dtype')} on {head.get('gpu') or head.get('device')})", "",
                  "| N | P | U | standard ms | hydragen ms | speed-up | max abs diff |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows[1:]:
            std, hyd = r.get("standard_ms"), r.get("hydragen_ms")
            sp = f"{std / hyd:.2f}x" if isinstance(std, float) and isinstance(hyd, float) else "-"
            lines.append(f"| {r['batch']} | {r['prefix']} | {r['suffix']} | {fmt(std) if isinstance(std, float) else 'OOM'} | "
                         f"{fmt(hyd) if isinstance(hyd, float) else 'OOM'} | {sp} | {r.get('max_abs_diff', float('nan')):.1e} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--db", required=True)
    r.add_argument("--out", default="docs/results", help="folder for the study file and the microbenchmark JSON")
    r.add_argument("--quick", action="store_true", help="tiny on the CPU with a small grid (smoke test)")
    r.add_argument("--vllm", action="store_true", help="add vLLM with prefix caching (needs vllm installed)")
    r.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("--db", required=True)
    p.add_argument("--microbench", help="the microbenchmark JSON lines (default: beside the database)")
    p.add_argument("-o", "--output")
    p.set_defaults(func=report)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
