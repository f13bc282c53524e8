"""Attention alone, standard vs Hydragen (seed 003, Figure 5): one decode step over batch x prefix x suffix.

Run as `python -m engines.adapters.hf.microbench '<json args>'` by `codebench-tui microbench attention`; prints
one JSON object per grid point on stdout. Standard attention reads a KV cache where every
sequence holds its own copy of the prefix (as a server without sharing stores it), through
SDPA; Hydragen reads the prefix once (engines.adapters.hf.hydragen). Both see the same numbers, and the
max abs difference of their outputs is reported with the timings.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from typing import Any

import torch

from engines.adapters.hf import hydragen

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Any, device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def point(device: torch.device, dtype: torch.dtype, n: int, p: int, u: int, a: dict[str, Any]) -> dict[str, Any]:
    """Time both kernels at one (batch n, prefix p, suffix u) point; queries of length query_len."""
    h, hkv, d, lq = a["heads"], a["kv_heads"], a["head_dim"], a["query_len"]
    out: dict[str, Any] = {"batch": n, "prefix": p, "suffix": u}
    scale = d**-0.5
    gen = torch.Generator(device=device).manual_seed(n * 1_000_003 + p * 131 + u)
    mk = lambda *s: torch.randn(*s, generator=gen, device=device, dtype=dtype)  # noqa: E731
    try:
        q, pk, pv = mk(n, h, lq, d), mk(1, hkv, p, d), mk(1, hkv, p, d)
        sk, sv = mk(n, hkv, u, d), mk(n, hkv, u, d)
        hyd = lambda: hydragen.hydragen_attention(q, sk, sv, (pk, pv), scale, h // hkv)  # noqa: E731
        got = hyd()
        out["hydragen_ms"] = 1000 * statistics.median(_time(hyd, device, a["warmup"], a["iters"]))
        del got
    except Exception as exc:  # noqa: BLE001 - one point's failure is that point's result
        if not _is_oom(exc):
            raise
        out["hydragen_ms"] = "oom"
        return out
    try:
        # Without sharing each sequence stores the prefix: the copies are part of what standard attention reads.
        k = torch.cat([pk.expand(n, -1, -1, -1), sk], dim=2)
        v = torch.cat([pv.expand(n, -1, -1, -1), sv], dim=2)
        std = functools.partial(hydragen.standard_attention, q, k, v, scale)
        ref = std()
        out["standard_ms"] = 1000 * statistics.median(_time(std, device, a["warmup"], a["iters"]))
        out["max_abs_diff"] = float((ref.float() - hyd().float()).abs().max())
        del k, v, ref, std  # the partial holds k and v too
    except Exception as exc:  # noqa: BLE001
        if not _is_oom(exc):
            raise
        out["standard_ms"] = "oom"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str]) -> int:
    a = json.loads(argv[0])
    device = torch.device(a["device"])
    dtype = DTYPES[a["dtype"]]
    if a.get("threads"):
        torch.set_num_threads(a["threads"])
    head = {"device": str(device), "dtype": a["dtype"], "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        head["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps({"header": head}), flush=True)
    with torch.inference_mode():
        for n in a["batch"]:
            for p in a["prefix_len"]:
                for u in a["suffix_len"]:
                    print(json.dumps(point(device, dtype, n, p, u, a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
