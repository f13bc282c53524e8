"""llama-cpp-python's ctypes bindings (`llama_cpp.llama_cpp`) without its package __init__, which imports numpy.

A process that has imported numpy runs llama.cpp's decode 2-3 % slower on this project's CPU machines, even with
OpenBLAS at one thread and numpy unused (benchmarks/llamacpp_vs_llama_bench.py --process; the cause is not known).
llama-bench's process holds no numpy, so codebench's llama.cpp worker must not either. The bindings are loaded
under a placeholder package that is dropped again at once: a later `import llama_cpp` runs the real __init__, which
finds these same modules in sys.modules and reuses them (one set of ctypes types per process).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import sys
import types
from importlib.metadata import PackageNotFoundError, version


def _load() -> types.ModuleType:
    package = sys.modules.get("llama_cpp")
    if package is not None and hasattr(package, "llama_cpp"):
        return package.llama_cpp
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'llama_cpp'", name="llama_cpp")
    placeholder = types.ModuleType("llama_cpp")
    placeholder.__path__, placeholder.__file__, placeholder.__spec__ = (
        list(spec.submodule_search_locations), spec.origin, spec)  # fmt: skip
    sys.modules["llama_cpp"] = placeholder
    try:
        import llama_cpp.llama_cpp as bound
    finally:
        del sys.modules["llama_cpp"]
    return bound


ll = _load()
try:
    __version__ = version("llama_cpp_python")
except PackageNotFoundError:
    __version__ = "unknown"

# llama-cpp-python's own log callback lives in its __init__: without it llama.cpp writes everything, the whole
# model-loader dump included, to stderr. Keep warnings and errors (ggml levels 3 and 4, and their continuations).
_WARN, _ERROR, _CONT = 3, 4, 5
_last_level = 0


@ll.llama_log_callback
def _log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    global _last_level
    if level != _CONT:
        _last_level = level
    if _last_level in (_WARN, _ERROR):
        sys.stderr.write(text.decode("utf-8", errors="replace"))
        sys.stderr.flush()


def quiet_log() -> None:
    """Route llama.cpp's log through _log (llama-cpp-python's __init__, if imported later, installs its own)."""
    ll.llama_log_set(_log, ctypes.c_void_p(0))


quiet_log()
# Where llama-cpp-python's __init__ is imported as well, its callback replaces ours: its logger's level is the filter.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
