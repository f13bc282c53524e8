"""Why `vllm bench throughput` at its defaults can run 2-3x slower than codebench's vllm engine on a CPU.

    python benchmarks/vllm_bench_dtype.py [--batch 16] [--rounds 3]

vLLM's `--dtype auto` downcasts an fp32 model to the platform's first dtype, bf16 on the CPU, while codebench's
vllm engine runs --precision (default fp32). bf16 is fast only where the CPU has native bf16 (AVX512_BF16/AMX);
elsewhere it is emulated. This runs the tool on tiny, 128/64 tokens, after a warm-up batch, four ways,
interleaved round by round (the order reversed in even rounds):
  auto, float32                 as this CPU is
  auto, float32 capped          oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2), as on a CPU without native bf16
and prints the median tokens/s of each and auto ÷ float32 per ISA. The crosscheck gives the tool codebench's dtype.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def tool(model: str, out: Path, batch: int, dtype: str, isa: str | None) -> float:
    """The crosscheck's own run of the tool (--dtype given unless "auto"), oneDNN held to `isa` if given."""
    from engines.adapters.vllm.peer_bench import bench_throughput

    os.environ.pop("ONEDNN_MAX_CPU_ISA", None)  # the tool's child process inherits this environment
    if isa:
        os.environ["ONEDNN_MAX_CPU_ISA"] = isa
    result = bench_throughput(model, out, input_len=128, output_len=64, requests=batch, cpu=True,
                              kv_cache_bytes=2 << 30, warmups=batch, dtype=None if dtype == "auto" else dtype)  # fmt: skip
    return result["tokens_per_second"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from engines.models.refs import materialize

    model = materialize("tiny")
    ways = [(d, isa) for isa in (None, "AVX2") for d in ("auto", "float32")]
    got: dict[tuple, list[float]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for d, isa in ways if r % 2 == 0 else ways[::-1]:
                got[(d, isa)].append(tool(model, Path(tmp) / "out.json", args.batch, d, isa))
                print(f"round {r + 1}: --dtype {d:<8} oneDNN {isa or 'native':<7} {got[(d, isa)][-1]:8.0f} tok/s",
                      flush=True)  # fmt: skip
    os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    from engines.measure.hardware import _cpu_model, cpu_features

    print(f"\nvllm bench throughput, tiny, batch {args.batch}, 128/64 tokens, median of {args.rounds} rounds; "
          f"{_cpu_model()}: {cpu_features() or 'features unknown'}")  # fmt: skip
    for isa in (None, "AVX2"):
        auto, fp32 = (statistics.median(got[(d, isa)]) for d in ("auto", "float32"))
        print(f"oneDNN {isa or 'native':<7} auto (bf16) {auto:8.0f}  float32 {fp32:8.0f}  auto / float32 {auto / fp32:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
