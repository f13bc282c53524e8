"""The decode phase in one C call (steploop.c), as llama-bench runs its llama_decode loop in C.

Driving each step from Python costs a few microseconds of interpreter and numpy work between llama_decode calls.
On tiny's Q4_0 GGUF at 1 thread (about 300 us a step) that put codebench 3 % below llama-bench's own loop in the
same process, against about 1 % with this loop (benchmarks/llamacpp_vs_llama_bench.py --loop). The library is
compiled once per source and compiler with the system's C compiler (`$CC`, else `cc`) into codebench's cache.
Where that cannot be done, the engine keeps its Python loop and stores why (decode_loop=auto), or refuses
(decode_loop=c).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

from engines.adapters.llamacpp.bindings import ll

SOURCE = Path(__file__).with_name("steploop.c")
# The addresses of the functions the C loop calls, as llama-cpp-python's libllama resolved them.
DECODE = ctypes.cast(ll._lib.llama_decode, ctypes.c_void_p).value
GET_LOGITS = ctypes.cast(ll._lib.llama_get_logits, ctypes.c_void_p).value


def _cache() -> Path:
    from engines.models.tiny import cache_dir

    return cache_dir() / "llama-steploop"


@lru_cache(maxsize=1)
def library() -> tuple[ctypes.CDLL | None, str]:
    """(the built library, "") or (None, why it is not available here)."""
    if time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        return None, "perf_counter is not CLOCK_MONOTONIC on this platform"
    cc = shlex.split(os.environ.get("CC") or "cc") or ["cc"]
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + repr((cc, platform.machine())).encode()).hexdigest()[:16]
    lib = _cache() / f"steploop-{key}.so"
    if not lib.exists():
        tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")  # another worker may build it at the same time
        try:
            lib.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run([*cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)],
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as e:  # no compiler, a read-only cache, a hung build
            tmp.unlink(missing_ok=True)
            return None, f"could not build it with {cc[0]} ({type(e).__name__})"
        if proc.returncode != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            return None, f"{cc[0]} could not build it ({last})"
        os.replace(tmp, lib)
    try:
        return ctypes.CDLL(str(lib)), ""
    except OSError as e:
        return None, f"{lib.name} did not load ({type(e).__name__})"


@lru_cache(maxsize=1)
def load() -> tuple[Callable | None, str]:
    """(the C loop, "") or (None, why it is not available here)."""
    lib, why = library()
    if lib is None:
        return None, why
    fn = lib.codebench_greedy_steps
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)]  # fmt: skip
    fn.restype = ctypes.c_int32
    return fn, ""


@lru_cache(maxsize=1)
def argmax() -> Callable | None:
    """The C loop's greedy pick for one row, (address, n) -> index, or None where the library is not available."""
    lib, _why = library()
    if lib is None:
        return None
    fn = lib.codebench_argmax
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int64], ctypes.c_int64
    return fn
