"""Peak memory of one cell, predicted before it runs, without torch: weights + KV cache + the largest layer's
activations + the attention kernel's workspace + a per-engine constant.

What is predicted is what the cell's peak is measured as (store.metrics.peak_mem): the torch allocator's peak on
a GPU (no CUDA context in it, so the constant is ~0), the process's resident memory on the CPU (interpreter and
libraries in the constant). The terms, per token of the prefill (the peak of a short-output cell is in the
prefill: the decode's KV growth is included by counting input + output tokens in the cache):
- KV: 2 x layers x KV heads x head dim x bytes, for every token the engine caches (EngineInfo.kv_cache);
- activations: one layer's live tensors, B x L x (4 x hidden + k x intermediate) x bytes, k = 3 for gated MLPs
  (gate, up, their product) and 2 otherwise (fc, activation);
- eager attention: B x heads x L x L scores, 10 bytes an element in 16-bit (the scaled scores, the masked copy,
  the fp32 softmax and its cast back all meet in transformers' eager_attention_forward), 12 in fp32; SDPA and
  FlashAttention never hold them.
On seed 001's H100 study (docs/results/2026-11-22-h100-seed001.db) these terms land within 2 % of the allocator's
peak for every cell that ran.

Whether a cell fits is not peak <= capacity: PyTorch's caching allocator keeps freed blocks cut to old sizes, and
a large new block needs fresh room. A cell is predicted to fit when its peak plus its largest single block fits;
that is how seed 001's eager b=8 in=4096 cell failed (42.6 GiB allocated + 18 GiB asked, 27 GiB cached in pieces).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from engines.base import EngineInfo
from engines.models.footprint import WORKER_OVERHEAD, cached_tokens, model_config, weight_bytes
from engines.study.grid import Cell
from engines.study.schema import EngineRun

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
EAGER_BYTES = {2: 10, 4: 12}  # bytes per B x heads x L x L element, by the activations' element size
GPU_CONSTANT = 0  # the allocator's peak holds no context or library code
VLLM_GPU_FRACTION = 0.9  # vLLM's own default gpu_memory_utilization: it takes this share of the card up front
# Resident memory of a loaded worker beyond its weights and KV cache: interpreter, libraries, buffers. Measured
# on tiny (2026-12-06, 2-core x86 host, 23 GiB, torch 2.13 CPU; VmHWM of the worker at batch 1, input 32):
# hf-generate 493 MiB - 20 MiB weights; llama.cpp 68 - 20 (its worker holds no numpy, tokenizer or corpus: a
# child process draws the prompts); vLLM 657 (our worker) + 3329 (its engine core, store.memfit.measured adds it)
# - 20 weights - 2048 KV pool. Fitted constants (store.memfit) refine them per host.
CPU_CONSTANTS = {
    "hf-generate": 470 * 2**20,
    "llama.cpp": 48 * 2**20,
    "vllm": 1900 * 2**20,
}
# llama.cpp: bits per weight of the GGUF it converts a checkpoint to, by quant (K-quants mix block types: the
# figures are llama.cpp's own quantize table for 7B models)
GGUF_BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "q4_k_m": 4.89, "q5_k_m": 5.69}
GGUF_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                 "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}  # fmt: skip
LLAMA_CTX_MIN = 256  # engines/adapters/llamacpp/engine.py's _CTX_MIN: its first context, per sequence
LLAMA_UBATCH = 512  # llama.cpp's default n_ubatch: the prefill runs in pieces of this many tokens
VLLM_CPU_KV_GIB = 2.0  # engines/adapters/vllm/engine.py's CPU_KV_CACHE_GIB: the KV pool it asks for on the CPU


@dataclass(frozen=True)
class Prediction:
    weights: int
    kv_cache: int
    activations: int
    workspace: int  # attention scores an eager kernel holds
    constant: int  # per engine and measure, fitted from stored runs where there are some
    largest_block: int  # the biggest single allocation, for the caching allocator's fit
    basis: str  # "gpu" (allocator peak) or "rss" (resident memory)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.workspace + self.constant

    def fits(self, capacity: int | None) -> bool | None:
        """None when the capacity is unknown; on a GPU the largest block must also find fresh room."""
        if capacity is None:
            return None
        need = self.total + (self.largest_block if self.basis == "gpu" else 0)
        return need <= capacity

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "predicted_bytes": self.total}


def _shape(cfg: dict[str, Any]) -> dict[str, int] | None:
    """Hidden size, MLP width, heads, vocabulary, KV bytes per token per byte of element, and whether gated."""
    from engines.models.presets import kv_layout

    try:
        kv = kv_layout(cfg)
        hidden = int(cfg.get("hidden_size") or cfg.get("n_embd"))
        heads = int(cfg.get("num_attention_heads") or cfg.get("n_head"))
        inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    gated = cfg.get("model_type") in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3")
    kv_per_token = 2 * int(kv["layers"]) * int(kv["kv_heads"]) * int(kv["head_dim"])
    return {"hidden": hidden, "inter": inter, "heads": heads, "kv_per_token": kv_per_token, "gated": int(gated)}


def _trimmed(cfg: dict[str, Any], weights: int, layers: int) -> tuple[dict[str, Any], int]:
    """Config and weight bytes with only the first `layers` blocks: embeddings stay, blocks scale."""
    key = "n_layer" if "n_layer" in cfg else "num_hidden_layers"
    total = int(cfg.get(key) or 0)
    if total <= 0 or layers >= total:
        return cfg, weights
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    embeddings = int(cfg.get("vocab_size") or 0) * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    per_param = weights / max(1, _params(cfg))
    blocks = max(0, weights - int(embeddings * per_param))
    return {**cfg, key: layers}, weights - blocks + blocks * layers // total


def _params(cfg: dict[str, Any]) -> int:
    """A rough parameter count, only to turn weight bytes into bytes per parameter."""
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 1)
    inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 1)
    vocab = int(cfg.get("vocab_size") or 0)
    return layers * (4 * hidden * hidden + 3 * hidden * inter) + vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)


def basis_of(device: str) -> str:
    return "gpu" if device.startswith("cuda") else "rss"


def default_constant(engine: str, basis: str) -> int:
    if basis == "gpu":
        return GPU_CONSTANT
    return CPU_CONSTANTS.get(engine, WORKER_OVERHEAD)


def _option_int(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    return value if type(value) is int and value > 0 else None


def llama_positions(cells: list[Cell], options: dict[str, Any]) -> int:
    """Positions llama.cpp's context holds when the last of `cells` runs, the run's earlier cells having run in
    order: the adapter's _ensure_capacity only grows it, to n_seq x a per-sequence length rounded up to 256, and
    never shrinks it (a batch-1 cell after a batch-8 one keeps 8 sequences' room). A fixed n_ctx stands."""
    fixed = _option_int(options, "n_ctx")
    if fixed:
        return fixed
    unified = options.get("kv_unified") is True
    n_seq, n_ctx = 1, LLAMA_CTX_MIN
    for c in cells:
        need = c.input_len + c.output_len
        seqs = max(c.batch, n_seq)
        room = c.batch * need <= n_ctx if unified else need <= n_ctx // n_seq
        if seqs > n_seq or not room:
            per = max(need, n_ctx // n_seq)
            n_seq, n_ctx = seqs, seqs * max(LLAMA_CTX_MIN, -(-per // LLAMA_CTX_MIN) * LLAMA_CTX_MIN)
    return n_ctx


def predict(model: str, run: EngineRun, cell: Cell, info: EngineInfo, device: str,
            constant: int | None = None, capacity: int | None = None,
            positions: int | None = None) -> Prediction | None:  # fmt: skip
    """The cell's peak, or None where the model cannot be sized here (a URL's server, an unknown directory).
    `constant`: a fitted per-engine constant (store.memfit), else the built-in one; `capacity`: the device's
    total bytes, which vLLM on a GPU takes its fraction of; `positions`: llama.cpp's context at this cell
    (llama_positions over the run's cells so far), else the cell's own tokens."""
    if info.serves_url:
        return None
    weights = weight_bytes(model, run, info.reads_gguf)
    cfg, _ = model_config(model)
    if cfg and weights and run.options.get("layers"):  # the HF engines' trimmed model (option layers=N)
        cfg, weights = _trimmed(cfg, weights, int(run.options["layers"]))
    shape = _shape(cfg) if cfg else None
    if weights is None or shape is None:
        return None
    basis = basis_of(device)
    elem = DTYPE_BYTES.get(run.precision or "", 2 if basis == "gpu" else 4)
    kv_elem: float = elem
    tokens = cell.batch * cell.input_len
    cached = cached_tokens(info.kv_cache, cell)
    if info.reads_gguf:  # llama.cpp: a GGUF at the run's quant, a KV cache of type_k/type_v over its context
        if cfg and run.quant in GGUF_BITS:  # converted from the checkpoint: weight_bytes gave it as stored
            stored = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
            stored_elem = 2 if model.endswith(":random") or "32" not in stored else 4
            weights = int(weights * GGUF_BITS[run.quant] / 8 / stored_elem)
        kv_elem = sum(GGUF_KV_BYTES.get(str(run.options.get(k, "f16")), 2.0) for k in ("type_k", "type_v")) / 2
        cached = positions or llama_positions([cell], run.options)
        elem = 4  # its compute buffer is f32, reserved for one ubatch of the prefill
        tokens = min(tokens, _option_int(run.options, "n_ubatch") or LLAMA_UBATCH)
    kv = int(shape["kv_per_token"] * kv_elem * cached)
    if info.tensor_parallel == "library" and basis == "rss":  # vLLM on the CPU: a KV pool of fixed size
        gib = run.options.get("kv_cache_gib", VLLM_CPU_KV_GIB)
        fraction = run.options.get("gpu_memory_utilization")
        if isinstance(fraction, (int, float)) and "kv_cache_gib" not in run.options and capacity:
            kv = max(0, int(capacity * fraction) - weights)  # it takes that share of host memory, weights first
        elif isinstance(gib, (int, float)) and not isinstance(gib, bool):
            kv = int(gib * 2**30)
    mlp = (3 if shape["gated"] else 2) * shape["inter"]
    activations = tokens * (4 * shape["hidden"] + mlp) * elem
    eager = run.attention == "eager" and not info.reads_gguf
    scores = cell.batch * shape["heads"] * cell.input_len**2
    workspace = scores * EAGER_BYTES[4 if elem == 4 else 2] if eager else 0
    largest = max(scores * 4 if eager else 0, tokens * shape["inter"] * elem)
    if info.tensor_parallel == "library" and basis == "gpu" and capacity:  # vLLM reserves its share up front
        fraction = float(run.options.get("gpu_memory_utilization", VLLM_GPU_FRACTION))
        return Prediction(0, int(capacity * fraction), 0, 0, 0, 0, basis)
    const = default_constant(run.engine, basis) if constant is None else constant
    return Prediction(weights, kv, activations, workspace, const, largest, basis)
