"""A rough memory footprint of a loaded run, in the parent and without torch: can the runs of a study
stay loaded side by side (the interleaved schedule), or must they take turns?

Weights from the model's own numbers (a preset's parameter count, the files of a directory or a GGUF),
the KV cache of the study's largest cell, and a fixed cost per worker process (interpreter, libraries,
a CUDA context). None where the model says nothing usable: the runner then relies on an OOM at load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.study.grid import Cell
from engines.study.schema import EngineRun

WORKER_OVERHEAD = 512 * 2**20  # interpreter + torch or llama.cpp, or a CUDA context
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, None: 4}
_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf")


def model_config(model: str) -> tuple[dict[str, Any] | None, int | None]:
    """(HF config, weight bytes as stored) for tiny, a preset or a local directory or GGUF."""
    if model == "tiny":
        from engines.models.tiny import load_tiny_config, param_count

        cfg = load_tiny_config()
        return cfg, param_count(cfg) * 4
    if model.endswith(":random"):
        from engines.models.presets import load

        preset = load(model[: -len(":random")])
        return preset.config, preset.params * 2
    path = Path(model).expanduser()
    try:
        if path.is_file():
            return None, path.stat().st_size
        if path.is_dir():
            stored = sum(f.stat().st_size for f in path.iterdir() if f.suffix in _FILE_SUFFIXES)
            cfg = json.loads((path / "config.json").read_text())
            return (cfg if isinstance(cfg, dict) else None), stored or None
    except (OSError, ValueError):
        pass
    return None, None


def weight_bytes(model: str, run: EngineRun, gguf: bool = False) -> int | None:
    """Bytes of weights in memory; `gguf`: the engine loads a GGUF it converts at the run's quant, so the
    stored size stands."""
    if model.endswith(":random"):
        from engines.models.presets import load

        preset = load(model[: -len(":random")])
        quant = run.quant if run.quant in ("int8", "nf4", "fp4") else None
        return preset.weight_bytes(run.precision or "bf16", quant)
    cfg, stored = model_config(model)
    if stored is None:
        return None
    if cfg is not None and run.precision in _DTYPE_BYTES and not gguf:
        stored_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
        stored_bytes = 4 if "32" in stored_dtype else 2
        return stored * _DTYPE_BYTES[run.precision] // stored_bytes
    return stored


def cached_tokens(kv_cache: str, cell: Cell) -> int:
    """Tokens an engine keeps in its KV cache for a cell, by its EngineInfo.kv_cache: "none" (the attention-free
    bound), "prefix-once" (a shared prefix counts once), else every sequence its own."""
    if kv_cache == "none":
        return 0
    shared = dict(cell.extra).get("shared_len", 0)
    if kv_cache == "prefix-once" and shared:
        return shared + cell.batch * (cell.input_len - shared + cell.output_len)
    return cell.batch * (cell.input_len + cell.output_len)


def kv_bytes(model: str, cells: list[Cell], precision: str | None = None, kv_cache: str = "per-sequence") -> int:
    """KV cache of the largest cell: layers x KV heads x head dim x 2 x bytes x tokens in flight."""
    cfg, _ = model_config(model)
    if not cfg or not cells:
        return 0
    try:
        from engines.models.presets import kv_layout

        kv = kv_layout(cfg)
    except (KeyError, TypeError, ZeroDivisionError):
        return 0
    tokens = max(cached_tokens(kv_cache, c) for c in cells)
    return 2 * kv["layers"] * kv["kv_heads"] * kv["head_dim"] * _DTYPE_BYTES.get(precision, 2) * tokens


def estimate(model: str, run: EngineRun, cells: list[Cell], kv_cache: str = "per-sequence",
             gguf: bool = False) -> int | None:  # fmt: skip
    """Bytes one loaded run holds at its largest cell; None when the weights cannot be sized here. `kv_cache` and
    `gguf` are the engine's EngineInfo.kv_cache and .reads_gguf."""
    if model.startswith(("http://", "https://")):
        return WORKER_OVERHEAD  # the server's memory is not this host's to hold
    weights = weight_bytes(model, run, gguf)
    if weights is None:
        return None
    return weights + kv_bytes(model, cells, run.precision, kv_cache) + WORKER_OVERHEAD


def device_memory(device: str) -> tuple[int, int] | None:
    """(total, free) bytes of `device`: NVML's on a GPU (no torch, no CUDA context), RAM total and available on
    the CPU; None where NVML cannot tell (no driver, no such GPU)."""
    if device.startswith("cuda"):
        try:
            import pynvml

            pynvml.nvmlInit()
            index = int(device.split(":")[1]) if ":" in device else 0
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            return int(info.total), int(info.free)
        except Exception:
            return None
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def free_bytes(device: str) -> int | None:
    """Memory the runs can still take on `device`: available RAM on the CPU, NVML's free memory on a GPU."""
    mem = device_memory(device)
    return mem[1] if mem else None
