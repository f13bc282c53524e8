"""A persistent CPU threadpool per context, as llama.cpp's own tools attach one (common_threadpools::init in
common/common.cpp for llama-server, llama-cli and llama-batched-bench; llama-bench too).

Without one (llama-cpp-python's default), ggml builds and frees a disposable threadpool for every graph it
computes, once per decode step. On tiny at 2 threads, in one process, an attached pool decoded 1-3 % faster
(paired medians of 12 alternated rounds, f32/q8_0/q4_0); through the CLI the difference was inside this host's
noise (benchmarks/llamacpp_vs_llama_bench.py --per-graph: paired medians 0.95-1.01). It is the default because it
is how llama.cpp's tools run, not for the speed. The pools use ggml's default parameters for their thread counts,
as common's do when no --cpu-mask, --prio or --poll is given.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

from engines.adapters.llamacpp.bindings import ll

MAX_THREADS = 512  # GGML_MAX_N_THREADS: the length of ggml_threadpool_params.cpumask


class ThreadpoolParams(ctypes.Structure):
    _fields_ = [("cpumask", ctypes.c_bool * MAX_THREADS), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]  # fmt: skip


@lru_cache(maxsize=1)
def _api() -> tuple | None:
    """(params_default, new, free, attach, detach), or None where this build has no separate CPU backend."""
    path = os.path.join(os.path.dirname(ll.__file__), "lib", "libggml-cpu.so")
    try:
        cpu = ctypes.CDLL(path)  # already loaded by llama_cpp: the same handle
        default, new, free = cpu.ggml_threadpool_params_default, cpu.ggml_threadpool_new, cpu.ggml_threadpool_free
        attach, detach = ll._lib.llama_attach_threadpool, ll._lib.llama_detach_threadpool
    except (OSError, AttributeError):
        return None
    default.argtypes, default.restype = [ctypes.c_int], ThreadpoolParams
    new.argtypes, new.restype = [ctypes.POINTER(ThreadpoolParams)], ctypes.c_void_p
    free.argtypes, free.restype = [ctypes.c_void_p], None
    attach.argtypes, attach.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], None
    detach.argtypes, detach.restype = [ctypes.c_void_p], None
    return default, new, free, attach, detach


class Threadpools:
    """The pools attached to one context; close() detaches and frees them (before or after llama_free)."""

    def __init__(self, ctx: int, n_threads: int, n_threads_batch: int) -> None:
        self.pools: list[int] = []
        self.ctx = None
        api = _api()
        if api is None:
            return
        default, new, _, attach, _ = api
        params, batch_params = default(n_threads), default(n_threads_batch)
        batch = None
        if n_threads_batch != n_threads:  # common: a batch pool, and the generation pool starts paused
            batch = new(ctypes.byref(batch_params))
            params.paused = True
        pool = new(ctypes.byref(params))
        self.pools = [p for p in (pool, batch) if p]
        if pool:
            attach(ctx, pool, batch)
            self.ctx = ctx

    @property
    def attached(self) -> bool:
        return self.ctx is not None

    def close(self) -> None:
        api = _api()
        if api is None:
            return
        _, _, free, _, detach = api
        if self.ctx is not None:
            detach(self.ctx)
            self.ctx = None
        for pool in self.pools:
            free(pool)
        self.pools = []
