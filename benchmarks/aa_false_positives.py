"""How often does a comparison call noise a difference, and how often does it find a real one?

    python benchmarks/aa_false_positives.py [--studies 4] [--on 2 --off 2] [--db-dir DIR]

A background process takes one core on and off (busy for --on seconds, idle for --off, phases
drifting), as a shared machine does. Meanwhile, per schedule (sequential, then interleaved, the two
alternating study by study so both see the same host):

- A/A: `hf-generate` on `tiny` twice in one study (the same configuration: every true ratio is 1).
  Reported: the share of cells `compare` calls significant (target <= 5%).
- A/B: `hf-generate` fp32 against `llama.cpp` f32, one thread each, a true difference of about
  1.5-4x depending on the batch (it is re-measured here: the median ratio over all studies of both
  schedules). Reported: the share of cells with a true ratio >= 1.3x that `compare` calls
  significant in the right direction (target >= 95%).

Every study runs through the real CLI into its own database; the verdicts are store.significance's,
the same code the Compare screen, `compare` and the exports use (no noise floor: none is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEDULES = ("sequential", "interleaved")
GRID = ["--batch", "1,2,4", "--input-len", "32,128", "--output-len", "16"]
AA = {"runs": [{"engine": "hf-generate", "precision": "fp32", "attention": "sdpa"}] * 2}
AB = {"runs": [{"engine": "llama.cpp", "quant": "f32", "options": {"n_threads": 1}},
               {"engine": "hf-generate", "precision": "fp32", "attention": "sdpa"}],
      "worker_env": {"OMP_NUM_THREADS": "1"}}  # fmt: skip
HOG = """
import random, sys, time
on, off = float(sys.argv[1]), float(sys.argv[2])
random.seed(1)
while True:
    end = time.monotonic() + on * random.uniform(0.5, 1.5)
    while time.monotonic() < end:
        pass
    time.sleep(off * random.uniform(0.5, 1.5))
"""


def study(path: Path, runs: dict, schedule: str) -> Path:
    """Run one study into its own database; returns the database."""
    base = {"model": "tiny", "schedule": schedule, **runs}
    study_file = path.with_suffix(".json")
    study_file.write_text(json.dumps(base))
    cmd = [sys.executable, "-m", "tui.cli", "run", "--study", str(study_file), *GRID, "--db", str(path), "--quiet"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=1800)
    return path


def verdicts(db_path: Path) -> list[tuple[tuple, float, bool]]:
    """(cell key, ratio run 2 / run 1, significant) per cell both runs measured."""
    from store.db import open_db
    from store.queries import list_runs
    from store.results import load_result
    from store.significance import run_comparisons

    db = open_db(db_path, create=False)
    with db.session() as s:
        results = [load_result(r, session=s, telemetry=False) for r in reversed(list_runs(session=s))]
    db.close()
    (_, row) = run_comparisons(results, 0, "tokens_per_s")
    return [(key, c.ratio, c.significant) for key, c in row.items() if c.ratio]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=4, help="studies per schedule and pair (default 4)")
    ap.add_argument("--on", type=float, default=2.0, help="seconds the background load is busy (mean)")
    ap.add_argument("--off", type=float, default=2.0, help="seconds it is idle (mean)")
    ap.add_argument("--db-dir", help="keep the databases here (default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.db_dir or tempfile.mkdtemp(prefix="aa-"))
    out.mkdir(parents=True, exist_ok=True)
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(args.on), str(args.off)])
    results: dict[tuple[str, str], list[tuple[tuple, float, bool]]] = {}
    t0 = time.monotonic()
    try:
        for i in range(args.studies):
            for schedule in SCHEDULES if i % 2 == 0 else SCHEDULES[::-1]:
                for pair, runs in (("A/A", AA), ("A/B", AB)):
                    db = study(out / f"{pair[-1]}-{schedule}-{i}.db", runs, schedule)
                    results.setdefault((pair, schedule), []).extend(verdicts(db))
                    print(f"  study {i + 1}/{args.studies} {pair} {schedule} done ({time.monotonic() - t0:.0f} s)",
                          flush=True)  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    ab = [v for s in SCHEDULES for v in results[("A/B", s)]]
    true_ratio = {k: statistics.median(r for kk, r, _ in ab if kk == k) for k in {k for k, _, _ in ab}}
    print(f"\nA/A and A/B on tiny, {args.studies} studies per schedule, background load busy ~{args.on:g} s / idle "
          f"~{args.off:g} s on one of {os.cpu_count()} cores; databases in {out}")
    print(f"{'schedule':<12} {'A/A cells':>9} {'called significant':>19} {'A/B cells >=1.3x':>17} {'detected':>9}")
    for s in SCHEDULES:
        aa = results[("A/A", s)]
        fp = sum(sig for _, _, sig in aa)
        real = [(k, r, sig) for k, r, sig in results[("A/B", s)] if true_ratio[k] >= 1.3 or true_ratio[k] <= 1 / 1.3]
        hit = sum(sig and (r > 1) == (true_ratio[k] > 1) for k, r, sig in real)
        print(f"{s:<12} {len(aa):>9} {fp:>9} ({fp / max(len(aa), 1):>6.1%}) {len(real):>17} "
              f"{hit / max(len(real), 1):>9.1%}")  # fmt: skip
    print("A/B true ratios (median over all studies), hf-generate / llama.cpp: "
          + ", ".join(f"b={k[0]} in={k[1]} {v:.2f}x" for k, v in sorted(true_ratio.items())))
    print(f"(targets: A/A called significant <= 5%; A/B detected >= 95%; {len(ab)} A/B cell ratios in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
