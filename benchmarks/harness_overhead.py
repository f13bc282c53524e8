"""tokens/s of hf-generate measured by codebench against a bare transformers loop, alternated in one run.

    python benchmarks/harness_overhead.py [--rounds 4] [--batch 4] [--input-len 128] [--output-len 64]

Both sides run in their own process with the same model, prompts, warm-up and number of timed
generate calls; the ratio is codebench / bare (target >= 0.98).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BARE = r"""
import json, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM
from engines.models.tiny import ensure_tiny
from engines.models.refs import tokenizer_file
from engines.models.workloads import synthetic_prompts
args = json.loads(sys.argv[1])
path = ensure_tiny()
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
prompts = synthetic_prompts(tokenizer_file(str(path)), args["batch"], args["input_len"], args["seed"])
ids = torch.tensor(prompts)
mask = torch.ones_like(ids)
def once():
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args["output_len"],
                             min_new_tokens=args["output_len"], do_sample=False, pad_token_id=1)
    out.tolist()
    return time.perf_counter() - t0
for _ in range(args["warmup"]):
    once()
means = [statistics.fmean(once() for _ in range(args["iters"])) for _ in range(args["repeats"])]
print(json.dumps({"tokens_per_s": args["batch"] * args["output_len"] / statistics.median(means)}))
"""


def bare(cfg: dict) -> float:
    import os

    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as codebench's worker
    out = subprocess.run([sys.executable, "-c", BARE, json.dumps(cfg)], capture_output=True, text=True, cwd=ROOT,
                         check=True, env=env)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def codebench(cfg: dict, db: Path) -> float:
    from engines.harness.runner import Runner
    from engines.registry import expand
    from engines.study.schema import build_spec
    from store.db import open_db

    spec = build_spec({
        "model": "tiny", "device": "cpu", "runs": [r.model_dump() for r in expand(["hf-generate"])],
        "grid": {"batch": [cfg["batch"]], "input_len": [cfg["input_len"]], "output_len": [cfg["output_len"]]},
        "timing": {k: cfg[k] for k in ("warmup", "iters", "repeats")}, "workload": {"seed": 0},
    })  # fmt: skip
    d = open_db(db)
    result = Runner(spec, d).run()
    with d.session() as s:
        from store.models import Run
        from store.queries import cells_of

        cells = cells_of(result.run_ids[0], session=s)
        if not cells:
            raise SystemExit(f"codebench run failed: {s.get(Run, result.run_ids[0]).error}")
        (cell,) = cells
    d.close()
    assert cell.status == "done", cell.error
    return cell.tokens_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from engines.harness.runner import Runner  # noqa: F401 - fail early if the project is not importable
    from engines.study.schema import Workload

    seed = Workload().cell_seed(a.batch, a.input_len)  # the runner's per-cell seed, so prompts match
    cfg = {"batch": a.batch, "input_len": a.input_len, "output_len": a.output_len, "warmup": 1, "iters": a.iters,
           "repeats": a.repeats, "seed": seed}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            # Alternate which side goes first so drift in machine state hits both equally.
            if i % 2 == 0:
                b = bare(cfg)
                c = codebench(cfg, Path(tmp) / f"r{i}.db")
            else:
                c = codebench(cfg, Path(tmp) / f"r{i}.db")
                b = bare(cfg)
            rows.append((b, c, c / b))
            print(f"round {i + 1}: bare {b:8.1f} tok/s   codebench {c:8.1f} tok/s   ratio {c / b:.3f}", flush=True)
    ratios = [r[2] for r in rows]
    print(f"\nhf-generate on tiny, batch {a.batch}, input {a.input_len}, output {a.output_len}, "
          f"{a.iters} iters x {a.repeats} repeats per side per round")  # fmt: skip
    print(f"median ratio codebench/bare: {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f}; "
          "target >= 0.98)")  # fmt: skip


if __name__ == "__main__":
    main()
