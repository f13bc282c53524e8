"""Architecture presets of real code models, built with random weights: `--model starcoder2-7b:random`.

Each preset is assets/presets/NAME.json: the published config.json numbers, the published parameter
count, and two counts computed on the meta device (`params`, and `linear_params`: the weights of the
nn.Linear layers that bitsandbytes quantizes, lm_head excluded). The counts are cached in the JSON so
this module, which the CLI imports, needs no torch; tests/test_presets.py recomputes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

from engines.base import SpecError

SUFFIX = ":random"
PRESETS = files("assets.presets")

# Bytes per weight element by precision, and what bitsandbytes adds per quantized weight.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
BLOCKSIZE_4BIT = 64  # bitsandbytes' default 4-bit block: one fp32 absmax per 64 weights
DOUBLE_QUANT_BLOCK = 256  # double quantization: absmax as uint8, one fp32 scale per 256 absmax


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    source: str
    published_params: int
    params: int  # total, computed on the meta device (tied embeddings counted once)
    linear_params: int  # in nn.Linear layers bitsandbytes would quantize (lm_head excluded)
    config: dict[str, Any]

    @property
    def ref(self) -> str:
        return self.name + SUFFIX

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    def weight_bytes(self, precision: str = "bf16", quant: str | None = None, double_quant: bool = False) -> int:
        """Bytes of weights once loaded: quantized linears plus everything else in `precision`."""
        other = self.params - self.linear_params
        if quant is None:
            return self.params * DTYPE_BYTES[precision]
        return quantized_linear_bytes(self.linear_params, quant, double_quant) + other * DTYPE_BYTES[precision]


def quantized_linear_bytes(n: int, quant: str, double_quant: bool = False) -> int:
    """Storage of `n` linear weights under bitsandbytes (rows ignored: scales are ~0.1% for int8)."""
    if quant == "int8":
        return n  # int8 codes; the per-row fp32 scales are a rounding error at these sizes
    if quant in ("nf4", "fp4"):
        blocks = n // BLOCKSIZE_4BIT
        absmax = blocks + 4 * (blocks // DOUBLE_QUANT_BLOCK) if double_quant else 4 * blocks
        return n // 2 + absmax
    raise SpecError(f"no weight size for quant '{quant}' (known: int8, nf4, fp4)")


def names() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in PRESETS.iterdir() if p.name.endswith(".json"))


@lru_cache(maxsize=None)
def load(name: str) -> Preset:
    path = PRESETS / f"{name}.json"
    if not path.is_file():
        raise SpecError(f"unknown preset '{name}' (known: {', '.join(names())}); `codebench-tui models` lists them")
    d = json.loads(path.read_text())
    return Preset(d["name"], d["title"], d["source"], int(d["published_params"]), int(d.get("params", 0)),
                  int(d.get("linear_params", 0)), d["config"])  # fmt: skip


def parse_ref(model: str) -> str | None:
    """'starcoder2-7b:random' -> 'starcoder2-7b' (checked); None when `model` is not a preset reference."""
    if not model.endswith(SUFFIX):
        return None
    name = model[: -len(SUFFIX)]
    load(name)
    return name


def is_ref(model: str) -> bool:
    return model.endswith(SUFFIX)


def kv_layout(config: dict[str, Any]) -> dict[str, int | None]:
    """Layers, KV heads, head size and sliding window from an HF config dict (Llama, StarCoder2, Qwen2,
    GPTBigCode key names), for KV-cache sizes without building the model."""
    if "n_layer" in config:  # GPT-2 naming (GPTBigCode: one shared KV head when multi_query)
        heads, hidden = config["n_head"], config["n_embd"]
        mqa = config.get("model_type") == "gpt_bigcode" and config.get("multi_query", True)
        return {"layers": config["n_layer"], "kv_heads": 1 if mqa else heads, "head_dim": hidden // heads,
                "window": None}  # fmt: skip
    heads = config["num_attention_heads"]
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False:
        window = None
    return {
        "layers": config["num_hidden_layers"],
        "kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "window": window,
    }
