"""llama.cpp's options, checked without importing llama_cpp: a bad one is refused before a run starts
(engines/adapters/llamacpp/__init__.py) and again, with defaults filled in, at load (engine.parse_options)."""

from __future__ import annotations

from typing import Any

from engines.base import SpecError

OPTIONS = ("n_threads", "n_threads_batch", "n_batch", "n_ubatch", "n_gpu_layers", "flash_attn", "type_k", "type_v",
           "n_ctx", "kv_unified", "split_mode", "repack", "threadpool", "decode_loop")  # fmt: skip
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
FLASH = {"auto": -1, "off": 0, "on": 1, False: 0, True: 1}
SPLITS = ("layer", "row")
MOST = 1 << 24  # past any thread count, batch or context llama.cpp can hold
CHOICES = {"repack": ("auto", "on", "off", True, False), "threadpool": ("attached", "per-graph"),
           "decode_loop": ("auto", "c", "python")}  # fmt: skip


def check_options(options: dict[str, Any], device: str) -> None:
    """SpecError naming the bad option and the fix."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SpecError(f"llama.cpp has no option {', '.join(unknown)[:200]} (known: {', '.join(OPTIONS)})")
    o = options
    for key in ("n_threads", "n_threads_batch", "n_batch", "n_ubatch", "n_ctx", "n_gpu_layers"):
        low = 0 if key == "n_gpu_layers" else 1
        if key in o and (not isinstance(o[key], int) or isinstance(o[key], bool) or not low <= o[key] <= MOST):
            raise SpecError(f"llama.cpp option {key} must be a whole number from {low} to {MOST}, "
                            f"got {str(o[key])[:40]!r}")  # fmt: skip
    if not isinstance(o.get("kv_unified", False), bool):  # a string would reach a ctypes bool as True
        raise SpecError(f"llama.cpp kv_unified must be true or false, got {str(o['kv_unified'])[:40]!r}")
    if o.get("n_gpu_layers", 0) > 0 and not device.startswith("cuda"):
        raise SpecError("llama.cpp n_gpu_layers > 0 needs --device cuda; leave it out on the CPU")
    flash = o.get("flash_attn", "auto")
    if not isinstance(flash, (str, int)) or flash not in FLASH:
        raise SpecError(f"llama.cpp flash_attn must be on, off or auto, got {str(flash)[:40]!r}")
    for key in ("type_k", "type_v"):
        if o.get(key, "f16") not in KV_TYPES:
            raise SpecError(f"llama.cpp {key} must be one of {', '.join(KV_TYPES)}, got {str(o[key])[:40]!r}")
    if o.get("type_v", "f16") not in ("f16", "f32", "bf16") and FLASH[flash] == 0:
        raise SpecError("llama.cpp needs flash_attn on (or auto) for a quantized V cache; drop flash_attn=off")
    if o.get("split_mode", "row") not in SPLITS:
        raise SpecError(f"llama.cpp split_mode must be row or layer, got {str(o['split_mode'])[:40]!r}")
    for key, allowed in CHOICES.items():
        value = o.get(key, "auto" if key != "threadpool" else "attached")
        if not isinstance(value, (str, int)) or value not in allowed:
            shown = " or ".join(", ".join(str(a) for a in allowed if not isinstance(a, bool)).rsplit(", ", 1))
            raise SpecError(f"llama.cpp {key} must be {shown}, got {str(value)[:40]!r}")
