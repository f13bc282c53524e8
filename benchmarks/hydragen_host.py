"""What one graphed hydragen decode step costs the host, beside what it costs the GPU, on one CUDA GPU.

    python benchmarks/hydragen_host.py                       # codellama-7b heads, N = 256, P = 4096, fp16

HF's decode loop is bound by the CPU launching kernels, so the host microseconds of each layer's
attention call matter as much as its GPU time. For one layer's decode attention (`DecodeGraphs.run`:
the input copy and the graph replay), for each suffix read (the bucketed masked read and flash's
variable-length kernel), and for comparison a one-kernel graph and one eager op, this prints host
microseconds per call with the GPU idle and with the GPU busy (a queue of matmuls ahead of it: if
the host time grows, the launch waits for the GPU), and GPU microseconds per call (CUDA events).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prefix-len", type=int, default=4096)
    ap.add_argument("--slots", type=int, default=160, help="suffix cache slots (U + G)")
    ap.add_argument("--filled", type=int, default=96, help="the decode step's slot")
    ap.add_argument("--calls", type=int, default=30)
    a = ap.parse_args()

    import torch

    from engines.adapters.hf import hydragen

    if not torch.cuda.is_available():
        print("hydragen_host: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev, dt, h, d = torch.device("cuda"), torch.float16, 32, 128
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dev, dt)  # noqa: E731
    pk, pv = rnd(1, a.prefix_len, h, d).transpose(1, 2), rnd(1, a.prefix_len, h, d).transpose(1, 2)
    q, k, v = (rnd(a.batch, 1, h, d).transpose(1, 2) for _ in range(3))  # HF's decode q/k/v: [N, H, 1, D] views
    big = rnd(8192, 8192)

    def busy() -> None:  # about 20 ms of GPU work queued ahead
        for _ in range(14):
            big @ big

    def host_us(call, gpu_busy: bool) -> float:
        torch.cuda.synchronize()
        if gpu_busy:
            busy()
        t = time.perf_counter()
        for _ in range(a.calls):
            call()
        dt_us = (time.perf_counter() - t) / a.calls * 1e6
        torch.cuda.synchronize()
        return dt_us

    def gpu_us(call) -> float:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        e0.record()
        for _ in range(a.calls):
            call()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) / a.calls * 1e3

    cases = {}
    for name, filled in (("graph, early step", 40), ("graph, the given step", a.filled)):
        state = hydragen.HydragenPrefix([(pk, pv)])
        state.allocate(a.batch, a.slots, graphs=True)
        state.begin(filled)
        with torch.inference_mode():
            assert state.graphs.run(state, 0, q, k, v, d**-0.5) is not None, state.graphs.error
        cases[name] = lambda s=state: s.graphs.run(s, 0, q, k, v, d**-0.5)  # noqa: E731
        graph, _ = next(iter(state.graphs.entries.values()))
        cases[name + ": replay alone"] = graph.replay
        cases[name + ": input copy alone"] = lambda s=state: torch._foreach_copy_(s.graphs.inputs, (q, k, v))  # noqa: E731
    one = torch.zeros(1, device=dev)
    tiny = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        one.add_(1)
        side.synchronize()
        tiny.capture_begin()
        one.add_(1)
        tiny.capture_end()
    torch.cuda.synchronize()
    cases["one-kernel graph replay"] = tiny.replay
    cases["one eager op (add_)"] = lambda: one.add_(1)  # noqa: E731
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}; N={a.batch} P={a.prefix_len} slots={a.slots} "
          f"slot={a.filled}, fp16, 32 heads x 128", flush=True)  # fmt: skip
    print(f"{'':48} {'host us, GPU idle':>18} {'host us, GPU busy':>18} {'GPU us':>8}")
    with torch.inference_mode():
        for name, call in cases.items():
            call()
            idle = statistics.median(host_us(call, False) for _ in range(3))
            loaded = statistics.median(host_us(call, True) for _ in range(3))
            print(f"{name:48} {idle:>18.1f} {loaded:>18.1f} {gpu_us(call):>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
