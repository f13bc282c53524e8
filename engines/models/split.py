"""Can a model's attention heads (and vocabulary) be split over --tp N ranks? Read from its config, no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.base import SpecError
from engines.study.schema import MAX_TP, EngineRun


def hf_config(model: str) -> dict[str, Any] | None:
    """The HF config of a model reference, where one can be read without loading anything."""
    from engines.models.refs import kind_of

    kind = kind_of(model)
    if kind == "embedded":
        from engines.models.tiny import load_tiny_config

        return load_tiny_config()
    if kind == "preset":
        from engines.models import presets

        return dict(presets.load(presets.parse_ref(model)).config)
    if kind == "dir":
        try:
            return json.loads((Path(model).expanduser() / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return None


def check_split(model: str, run: EngineRun, tensor_parallel: str) -> None:
    """Raise SpecError when run.tp cannot split this model's attention heads (or vocabulary) evenly;
    `tensor_parallel` is the engine's way of splitting (EngineInfo.tensor_parallel)."""
    tp = run.tp
    if tp <= 1 or tensor_parallel == "gpu-rows":  # llama.cpp's row split takes any shape
        return
    cfg = hf_config(model)
    if not cfg:
        return
    cfg = cfg.get("text_config", cfg)
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    kv = cfg.get("num_key_value_heads") or heads
    if cfg.get("model_type") == "gpt_bigcode" and cfg.get("multi_query", True):
        kv = 1
    vocab = cfg.get("vocab_size")
    fits = [d for d in range(1, MAX_TP + 1) if heads and heads % d == 0 and kv % d == 0 and not (vocab and vocab % d)]
    hint = f"use --tp {','.join(map(str, fits))}" if fits else "use --tp 1"
    if tensor_parallel == "library":  # vLLM replicates KV heads when there are fewer than ranks
        if heads and (heads % tp or (kv % tp and tp % kv)):
            raise SpecError(f"{run.label()}: {model} has {heads} attention heads and {kv} KV heads, which "
                            f"--tp {tp} cannot split evenly; {hint}")  # fmt: skip
        return
    if heads and (heads % tp or kv % tp):
        raise SpecError(f"{run.label()}: {model} has {heads} attention heads and {kv} KV heads, which --tp {tp} "
                        f"cannot split evenly; {hint}")  # fmt: skip
    if vocab and vocab % tp:
        raise SpecError(f"{run.label()}: {model}'s vocabulary ({vocab}) does not split over --tp {tp}; {hint}")
