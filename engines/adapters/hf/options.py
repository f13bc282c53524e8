"""Options and combination rules of the HF engines (hf-generate, hf-pipeline, torch-compile); no torch.

Options (`--opt KEY=VALUE`):
  cache=dynamic|static      KV cache of HF generate (torch-compile is always static)
  compile=off|default|reduce-overhead|max-autotune
                            torch.compile of the decode step; reduce-overhead adds CUDA graphs (GPU only).
                            hf-generate compiles through transformers' own path and needs cache=static;
                            torch-compile defaults to reduce-overhead on a GPU and default on the CPU.
  double_quant=true         bitsandbytes 4-bit (nf4/fp4): quantize the quantization constants too
  layers=N                  random presets only: keep the first N layers (smoke tests on small machines)
  sliding_window=N|none     override the model's sliding window (none: full causal attention)
The attention axis: eager; sdpa (PyTorch picks the kernel); sdpa-math, sdpa-efficient, sdpa-flash
(the kernel forced with torch.nn.attention.sdpa_kernel); flash_attention_2 (the flash-attn package).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from engines.base import Availability

ATTENTION = ("sdpa", "eager", "sdpa-math", "sdpa-efficient", "sdpa-flash", "flash_attention_2")
SDPA_FORCED = {"sdpa-math": "MATH", "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-flash": "FLASH_ATTENTION"}
QUANT = ("int8", "nf4", "fp4", "gptq")
CACHES = ("dynamic", "static")
COMPILE = ("off", "default", "reduce-overhead", "max-autotune")
OPTIONS = ("cache", "compile", "double_quant", "layers", "sliding_window")
GPTQ_BACKENDS = ("gptqmodel", "auto_gptq")


def parse(engine: str, options: dict[str, Any], device: str) -> dict[str, Any]:
    """Options with defaults filled in; raises ValueError (one line) for a bad key or value."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{engine} has no option {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    o = dict(options)
    static_only = engine == "torch-compile"
    o.setdefault("cache", "static" if static_only else "dynamic")
    if o["cache"] not in CACHES:
        raise ValueError(f"{engine} option cache must be dynamic or static, got {o['cache']!r}")
    if static_only and o["cache"] != "static":
        raise ValueError("torch-compile always uses a static KV cache; leave the cache option out")
    default_compile = ("reduce-overhead" if device.startswith("cuda") else "default") if static_only else "off"
    c = o.get("compile", "auto" if static_only else "off")
    c = "off" if c in (None, False, "none") else c
    o["compile"] = default_compile if c == "auto" and static_only else c
    if o["compile"] not in COMPILE:
        raise ValueError(f"{engine} option compile must be one of {', '.join(COMPILE)}, got {o['compile']!r}")
    o["double_quant"] = o.get("double_quant", False)
    if o["double_quant"] not in (True, False):
        raise ValueError(f"{engine} option double_quant must be true or false, got {o['double_quant']!r}")
    layers = o.get("layers")
    if layers is not None and (not isinstance(layers, int) or isinstance(layers, bool) or layers < 1):
        raise ValueError(f"{engine} option layers must be a positive integer, got {layers!r}")
    if "sliding_window" in o:
        w = o["sliding_window"]
        if w in (None, "none"):
            o["sliding_window"] = None
        elif not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise ValueError(f"{engine} option sliding_window must be a positive integer or none, got {w!r}")
    return o


def rules(engine: str, precision: str | None, attention: str | None, quant: str | None, options: dict[str, Any],
          device: str) -> Availability:  # fmt: skip
    """Combinations that cannot run, found before anything is loaded."""
    on_gpu = device.startswith("cuda")
    try:
        o = parse(engine, options, device)
    except ValueError as exc:
        return Availability.no(str(exc))
    precision = precision or "fp32"
    attention = attention or "sdpa"
    if attention in ("flash_attention_2", "sdpa-efficient") and not on_gpu:
        return Availability.no(f"{attention} is a CUDA kernel", "use --attention sdpa, sdpa-math or sdpa-flash on the CPU")
    if attention in ("flash_attention_2", "sdpa-flash") and on_gpu and precision == "fp32":
        return Availability.no(f"{attention} on a GPU runs fp16/bf16 only, not fp32", "use --precision bf16 or fp16")
    if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return Availability.no("flash_attention_2 needs the flash-attn package, which is not installed",
                               "pip install flash-attn --no-build-isolation")  # fmt: skip
    if attention == "sdpa-flash" and on_gpu and o["cache"] == "static":
        return Availability.no("sdpa-flash cannot take the attention mask a static KV cache needs on the GPU",
                               "use --attention sdpa or sdpa-efficient with a static cache")  # fmt: skip
    if o["compile"] == "reduce-overhead" and not on_gpu:
        return Availability.no("compile=reduce-overhead captures CUDA graphs, which need a GPU",
                               "use --opt compile=default on the CPU")  # fmt: skip
    if o["compile"] != "off" and o["cache"] != "static":
        return Availability.no("transformers compiles the decode step only with a static KV cache",
                               "add --opt cache=static (or use --engine torch-compile)")  # fmt: skip
    if o["compile"] != "off" and quant is not None:
        return Availability.no(f"compile with {quant} quantization is not supported by codebench",
                               "drop --opt compile, or drop --quant")  # fmt: skip
    if o["double_quant"] and quant not in ("nf4", "fp4"):
        return Availability.no("double_quant applies to 4-bit quantization only", "use --quant nf4 or fp4")
    if quant in ("int8", "nf4", "fp4") and importlib.util.find_spec("bitsandbytes") is None:
        return Availability.no(f"--quant {quant} needs bitsandbytes, which is not installed",
                               'pip install "codebench-tui[quant]"')  # fmt: skip
    if quant == "gptq" and not any(importlib.util.find_spec(m) for m in GPTQ_BACKENDS):
        return Availability.no("--quant gptq needs a GPTQ backend (gptqmodel), which is not installed",
                               "pip install gptqmodel --no-build-isolation")  # fmt: skip
    return Availability.yes()
