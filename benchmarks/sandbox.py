"""Benchmark the code sandbox on HumanEval's 164 canonical solutions.

Prints, from one run: the wall time of all 164 through the sandbox and through a bare
`python -c PROGRAM` (same interpreter, no limits, no isolation), both with --workers at once;
then the per-completion cost of each, one program at a time, interleaved, and their ratio.

    python benchmarks/sandbox.py [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from engines.quality import humaneval, sandbox


def bare(python: str, program: str) -> bool:
    r = subprocess.run([python, "-c", program], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return r.returncode == 0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    layers = sandbox.layers()
    python = layers["python"]
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True).stdout.strip()
    programs = [humaneval.build_program(p, p.canonical_solution) for p in humaneval.load_problems().values()]
    limits = sandbox.Limits(wall_s=10)

    sbx_out, sbx_wall = timed(lambda: sandbox.run_many(programs, limits, args.workers))
    with ThreadPoolExecutor(args.workers) as pool:
        bare_ok, bare_wall = timed(lambda: list(pool.map(lambda s: bare(python, s), programs)))

    sbx_each, bare_each = [], []
    for prog in programs:  # interleaved, so drift in machine load hits both alike
        sbx_each.append(timed(lambda: sandbox.run_program(prog, limits))[1])
        bare_each.append(timed(lambda: bare(python, prog))[1])
    overhead = [s - b for s, b in zip(sbx_each, bare_each)]

    res = {
        "problems": len(programs), "workers": args.workers, "python": f"{python} {version}",
        "passed": {"sandbox": sum(o.passed for o in sbx_out), "bare": sum(bare_ok)},
        "parallel_wall_s": {"sandbox": sbx_wall, "bare": bare_wall},
        "per_completion_median_s": {"sandbox": statistics.median(sbx_each), "bare": statistics.median(bare_each)},
        "per_completion_mean_s": {"sandbox": statistics.fmean(sbx_each), "bare": statistics.fmean(bare_each)},
        "overhead_median_s": statistics.median(overhead),
        "layers": layers,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"HumanEval canonical solutions: {len(programs)} programs, {args.workers} workers, {python} {version}")
    print(f"{'':32}{'sandbox':>12}{'bare python -c':>16}{'ratio':>8}")
    rows = [("passed", res["passed"], "{:.0f}"),
            (f"wall, all {len(programs)} ({args.workers} workers) s", res["parallel_wall_s"], "{:.2f}"),
            ("per completion, median ms", {k: v * 1e3 for k, v in res["per_completion_median_s"].items()}, "{:.1f}"),
            ("per completion, mean ms", {k: v * 1e3 for k, v in res["per_completion_mean_s"].items()}, "{:.1f}")]
    for name, v, fmt in rows:
        ratio = v["sandbox"] / v["bare"] if v["bare"] else float("nan")
        print(f"{name:32}{fmt.format(v['sandbox']):>12}{fmt.format(v['bare']):>16}{ratio:>8.2f}")
    print(f"sandbox overhead per completion (median of differences): {res['overhead_median_s'] * 1e3:.1f} ms")
    for k, v in layers.items():
        print(f"  {k:10} {v}")
    if res["passed"]["sandbox"] != len(programs):
        sys.exit("some canonical solutions failed in the sandbox")


if __name__ == "__main__":
    main()
