"""What can be known about a study before any worker starts, beyond the spec's own checks: the model's files,
the device, and combinations an engine would refuse only after loading. Imports nothing heavy."""

from __future__ import annotations

import json
from pathlib import Path

GGUF_ENGINES = ("llama.cpp",)
URL_ENGINES = ("openai",)


def check_files(model: str, kind: str) -> None:
    """What can be seen of a model's files before any worker starts: a GGUF's header and tensor table, a
    directory's config.json."""
    from engines.spec import SpecError

    if kind == "gguf":
        try:
            from engines.gguf_convert import inspect_gguf
        except ImportError:  # no gguf package: llama.cpp is not installed and its check says so
            return
        inspect_gguf(model)
    elif kind == "dir":
        cfg = Path(model).expanduser() / "config.json"
        try:
            data = json.loads(cfg.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SpecError(f"{cfg} is not a readable JSON model config ({type(exc).__name__}); fix it or give "
                            "another model directory") from None  # fmt: skip
        if not isinstance(data, dict) or not (data.get("model_type") or data.get("architectures")):
            raise SpecError(f"{cfg} names no model_type or architectures; it is not an HF model config")


def check_device(device: str) -> None:
    """--device cuda on a machine whose driver shows no GPU fails here, not after a model load."""
    from engines.hardware import gpus
    from engines.spec import SpecError

    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= len(gpus()):
            seen = f"{len(gpus())} GPU(s)" if gpus() else "no GPU"
            raise SpecError(f"--device {device} but the NVIDIA driver shows {seen} here; use --device cpu or auto")


def check_window(spec, run, device: str) -> None:
    """PyTorch's flash kernel takes no mask on CUDA, so it cannot apply a sliding window shorter than a cell's
    context: refused before the model loads (the worker would refuse it after)."""
    from engines.footprint import model_config
    from engines.presets import kv_layout
    from engines.spec import SpecError

    if run.attention != "sdpa-flash" or not device.startswith("cuda") or "sliding_window" in run.options:
        return
    cfg, _ = model_config(spec.model)
    try:
        window = kv_layout(cfg)["window"] if cfg else None
    except (KeyError, TypeError, ZeroDivisionError):
        return
    longest = max((c.input_len + c.output_len - 1 for c in spec.cells()), default=0)
    if window and longest >= window:
        raise SpecError(f"{run.label()}: PyTorch's flash kernel cannot apply this model's {window}-token sliding "
                        f"window to a {longest}-token context; use --attention sdpa or sdpa-efficient, or "
                        "--opt sliding_window=none")  # fmt: skip
