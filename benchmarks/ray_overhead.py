"""Dispatch overhead of the Ray executor: one study through a one-node Ray cluster on this machine
against the local executor, total wall time, alternated in one run.

    python benchmarks/ray_overhead.py [--rounds 2]

The study is 20 small cells on tiny (hf-generate, batch 1..16 x input 16..128, 16 new tokens).
Both sides give the worker every core (the cluster node has them all and the run asks for them
with ?cpus=N), so the ratio ray / local is the executor's own cost (target <= 1.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import LocalCluster  # noqa: E402

STUDY = ["run", "--engine", "hf-generate", "--batch", "1,2,4,8,16", "--input-len", "16,32,64,128",
         "--output-len", "16", "--warmup", "0", "--iters", "1", "--repeats", "2", "--quiet"]  # fmt: skip


def timed(args: list[str], db: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tui.cli", *args, "--db", str(db)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"codebench-tui failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    cluster = LocalCluster(cpus_per_node=cores, worker_node=False).start()
    executor = f"{cluster.address}?cpus={cores}"
    local, ray = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Untimed first runs: tiny built, page cache warm, and the cluster's first client server started.
            timed(STUDY, Path(tmp) / "warm.db")
            timed(STUDY + ["--executor", executor], Path(tmp) / "warm-ray.db")
            for r in range(args.rounds):
                local.append(timed(STUDY, Path(tmp) / f"local{r}.db"))
                ray.append(timed(STUDY + ["--executor", executor], Path(tmp) / f"ray{r}.db"))
                print(f"round {r + 1}: local {local[-1]:.1f} s, ray {ray[-1]:.1f} s, ratio {ray[-1] / local[-1]:.3f}")
    finally:
        cluster.stop()
    ratio = statistics.median(ray) / statistics.median(local)
    print(f"20 cells, {cores} cores: local median {statistics.median(local):.1f} s, ray median "
          f"{statistics.median(ray):.1f} s, ratio ray/local {ratio:.3f} (target <= 1.3)")  # fmt: skip


if __name__ == "__main__":
    main()
