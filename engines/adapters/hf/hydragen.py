"""Hydragen attention (seed 003) for HF Llama models through transformers' AttentionInterface.

Attention over [shared prefix; own suffix] is split in two and recombined exactly:
    prefix part  every sequence's queries against the one shared prefix KV, folded into a single
                 batch-1 attention (N x q queries per KV head): a matrix-matrix product, the prefix
                 KV read once instead of N times
    suffix part  each sequence's queries against its own suffix KV (causal)
    combine      out = out_p * exp(lse_p - lse) + out_s * exp(lse_s - lse), lse = logaddexp(lse_p, lse_s)
Both parts come from kernels that return the log-sum-exp: PyTorch's flash attention (CPU, and
CUDA in fp16/bf16), memory-efficient attention (CUDA fp32), else a chunked matmul fallback.

The engine passes the prefix KV per layer as `hydragen_prefix=HydragenPrefix(...)` in the model
call; the kwarg reaches the attention function unchanged. Without it, the function is plain SDPA
(the prefix's own prefill). With `HydragenPrefix.allocate`, the state also holds a preallocated
suffix KV cache (U + G slots per sequence, written in place at `filled`) and the model runs with
no HF cache at all, as `noattention` does; without it the suffix KV comes from the HF cache the
caller passes (DynamicCache concatenates it every step). `noattention` returns zeros: the
attention-free upper bound.

HF's eager decode loop is bound by the CPU launching kernels (on an H100, ~10 us per PyTorch op;
the attention-free bound spends ~0.7 ms per layer), so on CUDA each layer's decode attention is a
CUDA graph (`DecodeGraphs`): the cache write at a device-side slot, the prefix part, the suffix
part, and the fp32 combine, replayed for 1 input copy and 1 graph launch (~20 us of host time on an
H200's host). The suffix part reads the cache's filled slots rounded up to a bucket of 32, the rest
masked, through cuBLAS, with one graph per layer and bucket. On an H200 at N = 256 that is 3.4 ms
per step over 32 layers; flash's variable-length kernel told each sequence's used slots took
6.6 ms, and reading every slot 5 ms. Elsewhere (the CPU, the suffix prefill, `cache=dynamic`)
the same maths runs eagerly through flash kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

_MATH_CHUNK = 1 << 24  # score elements per chunk of the fallback (64 MiB in fp32)
_aten = torch.ops.aten
# Resolved once: looking an op up through torch.ops on every call costs microseconds per layer.
_FLASH_CPU = _aten._scaled_dot_product_flash_attention_for_cpu.default
_FLASH_CUDA = _aten._scaled_dot_product_flash_attention.default
_EFFICIENT_CUDA = _aten._scaled_dot_product_efficient_attention.default


def _bmm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for [B, M, K] x [B, K, N] with fp32 accumulation and an fp32 result (fp16/bf16 inputs read as is on CUDA)."""
    if a.is_cuda and a.dtype is not torch.float32:
        try:
            return torch.bmm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass  # a torch without bmm's out_dtype: upcast instead (exact, more bytes)
    return torch.bmm(a.float(), b.float())


@dataclass
class HydragenPrefix:
    """The shared prefix's keys and values per layer, each [1, kv_heads, P, head_dim]; optionally the suffix cache.

    `suffix` (after `allocate`): per layer a preallocated [N, kv_heads, slots, head_dim] key and value
    buffer; a model call writes its tokens' keys and values at slots [filled, filled + L) and attends
    to slots [0, filled + L). The caller sets `filled` before each call (the engine: position - P).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    suffix: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    filled: int = 0
    graphs: DecodeGraphs | None = None  # CUDA graphs of the decode steps (allocate(graphs=True) on CUDA)
    slot: torch.Tensor | None = None  # after allocate: `filled` on the device, where a decode step writes
    bias: torch.Tensor | None = None  # after allocate: 0 for the slots a decode step reads, -inf after (fp32)
    collecting: bool = False  # a model call now is the prefix's own prefill: keep its keys and values

    def __len__(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def allocate(self, n: int, slots: int, graphs: bool = False) -> None:
        """A static suffix cache of `slots` tokens for each of n sequences, shaped like the prefix KV.

        Zeroed: the masked decode step reads unfilled slots, and 0 x garbage could be NaN.
        """
        k0 = self.layers[0][0]
        shape = (n, k0.shape[1], slots, k0.shape[3])
        self.suffix = [(k0.new_zeros(shape), k0.new_zeros(shape)) for _ in self.layers]
        self.filled = 0
        self.slot = torch.zeros(1, dtype=torch.long, device=k0.device)
        self.bias = torch.zeros(slots, device=k0.device)
        self.graphs = DecodeGraphs() if graphs and k0.is_cuda else None

    def keep_prefix(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """During the prefix prefill: hold this layer's keys/values, or copy them into the ones held.

        Copying in place keeps the tensors the decode graphs read, so a state (and its graphs) serves
        every call of one shape.
        """
        if layer < len(self.layers):
            held_k, held_v = self.layers[layer]
            if held_k.shape != key.shape:
                raise RuntimeError(f"hydragen holds a prefix of {tuple(held_k.shape)}; this call's is {tuple(key.shape)}")
            held_k.copy_(key)
            held_v.copy_(value)
        elif layer == len(self.layers):
            self.layers.append((key, value))
        else:
            raise RuntimeError(f"hydragen prefix: layer {layer} before layer {len(self.layers)}")

    def read_end(self) -> int:
        """Slots a graphed decode step reads: the filled ones rounded up to a bucket."""
        return min(self.suffix[0][0].shape[2], -(-(self.filled + 1) // DECODE_BUCKET) * DECODE_BUCKET)

    def begin(self, filled: int) -> None:
        """Before a model call: its tokens go to slots [filled, filled + L)."""
        self.filled = filled
        if filled < self.bias.shape[0]:  # three tiny kernels per step: the graphs read slot and mask on the device
            self.slot.fill_(filled)
            self.bias.zero_()[filled + 1 :].fill_(float("-inf"))

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's keys/values [N, Hkv, L, D] in place; the filled part of the cache (views)."""
        kb, vb = self.suffix[layer]
        start, end = self.filled, self.filled + key.shape[2]
        if end > kb.shape[2] or key.shape[0] != kb.shape[0]:
            raise RuntimeError(f"hydragen suffix cache holds {kb.shape[0]} x {kb.shape[2]} tokens; this call needs "
                               f"{key.shape[0]} x {end}")  # fmt: skip
        kb[:, :, start:end].copy_(key)
        vb[:, :, start:end].copy_(value)
        return kb[:, :, :end], vb[:, :, :end]


def _math_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              causal: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Attention and its log-sum-exp in fp32 matmuls, chunked over queries; causal is bottom-right aligned."""
    lq, lk = q.shape[-2], k.shape[-2]
    rows = max(1, _MATH_CHUNK // max(1, q.shape[0] * q.shape[1] * lk))
    outs, lses = [], []
    kf, vf = k.float(), v.float()
    for start in range(0, lq, rows):
        qs = q[..., start : start + rows, :].float()
        s = torch.matmul(qs, kf.transpose(-1, -2)) * scale
        if causal:
            qpos = torch.arange(start, start + qs.shape[-2], device=q.device)[:, None] + (lk - lq)
            s = s.masked_fill(torch.arange(lk, device=q.device)[None, :] > qpos, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        outs.append(torch.matmul(torch.exp(s - lse[..., None]), vf))
        lses.append(lse)
    return torch.cat(outs, dim=-2).to(q.dtype), torch.cat(lses, dim=-1)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """softmax(q k^T * scale) v and logsumexp of the scores (fp32), [B, H, Lq, D] / [B, H, Lq].

    `causal` aligns the mask bottom-right (query i sees keys up to i + Lk - Lq). Inputs may be
    strided views (a slice of a preallocated cache) as long as the last dimension is contiguous.
    """
    lq, lk = q.shape[-2], k.shape[-2]
    fused_causal = causal and lq == lk  # PyTorch's is_causal is top-left aligned: only safe when square
    if causal and lq == 1:
        causal = fused_causal = False  # one query sees every key
    if causal and not fused_causal:
        return _math_lse(q, k, v, scale, True)
    dev = q.device.type
    try:
        if dev == "cpu":
            out, lse = _FLASH_CPU(q, k, v, 0.0, fused_causal, scale=scale)[:2]
            return out, lse if lse.dtype == torch.float32 else lse.float()
        if dev == "cuda" and q.dtype is not torch.float32 and q.shape[-1] <= 256:
            res = _FLASH_CUDA(q, k, v, 0.0, fused_causal, False, scale=scale)
            return res[0], res[1][..., :lq]  # the flash kernel's lse is fp32 already
        if dev == "cuda":
            res = _EFFICIENT_CUDA(q, k, v, None, True, 0.0, fused_causal, scale=scale)
            return res[0], res[1][..., :lq]  # the kernel pads the lse to a multiple of 32 queries
    except (RuntimeError, NotImplementedError):
        pass  # an unsupported shape or dtype for the fused kernel: the fallback is exact, only slower
    return _math_lse(q, k, v, scale, causal)


def prefix_attention(query: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """All N sequences' queries [N, H, L, D] against one prefix [1, Hkv, P, D], as one batch-1 attention.

    Returns [N, H, L, D] / [N, H, L] (fp32 lse), views of the kernel's output where the layout allows.
    Flash's own split-KV heuristic fills the GPU at decode shapes (N = 256 x P = 16384 x 32 heads: its
    split kernel ran at ~310 TFLOP/s on an H200); splitting the keys here as well was 0.25-0.87x.
    """
    n, h, lq, d = query.shape
    hkv = pk.shape[1]
    g = h // hkv
    # Query head j*g + i reads KV head j (HF's repeat_kv order): group the queries by KV head. For MHA
    # decode queries in HF's [N, L, H, D] memory this is a view, and so are the two results below.
    q = query.view(n, hkv, g, lq, d).permute(1, 0, 2, 3, 4).reshape(1, hkv, n * g * lq, d)
    out, lse = attention_with_lse(q, pk, pv, scale)
    out = out.view(hkv, n, g, lq, d).permute(1, 0, 2, 3, 4).reshape(n, h, lq, d)
    lse = lse.view(hkv, n, g, lq).permute(1, 0, 2, 3).reshape(n, h, lq)
    return out, lse


def suffix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                     groups: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Each sequence's queries [N, H, L, D] against its own suffix KV [N, Hkv, U, D], bottom-right causal."""
    n, h, lq, d = query.shape
    if lq == 1 and groups > 1:  # decode with GQA: a KV head's query heads share its keys, so no repeat_kv copy
        out, lse = attention_with_lse(query.reshape(n, h // groups, groups, d), key, value, scale)
        return out.reshape(n, h, 1, d), lse.reshape(n, h, 1)
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    return attention_with_lse(query, k, v, scale, causal=True)


def masked_suffix_attention(query: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, bias: torch.Tensor,
                            scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One decode query per sequence [N, H, 1, D] against its static cache [N, Hkv, S, D] with an additive mask [S].

    `bias` is 0 for the slots read and -inf after (slot 0 must be read). Shapes never change from step
    to step (the mask is a device tensor), so a CUDA graph can replay it. Unfilled slots must hold
    finite numbers (allocate zeroes the cache): their weight is 0, and 0 x NaN is not. Scores and
    output are fp32 (cuBLAS accumulates fp16/bf16 products in fp32, as flash does); the probabilities
    meet V in the cache dtype, as in flash. Six kernels: each one costs the GPU a few microseconds
    per layer and step, so the softmax is one log_softmax. Returns [N, H, 1, D] fp32 and [N, H, 1] lse.
    """
    n, h, _, d = query.shape
    hkv, slots = kb.shape[1], kb.shape[2]
    q = query.reshape(n * hkv, h // hkv, d)  # a KV head's query heads share its keys: no repeat_kv
    s = torch.add(bias, _bmm_f32(q, kb.reshape(n * hkv, slots, d).transpose(1, 2)), alpha=scale)
    log_p = torch.log_softmax(s, dim=-1)
    lse = s[..., 0] - log_p[..., 0]  # s - log_softmax(s) is the lse in every read slot
    probs = torch.exp(log_p, out=torch.empty(log_p.shape, dtype=vb.dtype, device=log_p.device))
    out = _bmm_f32(probs, vb.reshape(n * hkv, slots, d))
    return out.view(n, h, 1, d), lse.view(n, h, 1)


def combine(out_p: torch.Tensor, lse_p: torch.Tensor, out_s: torch.Tensor, lse_s: torch.Tensor) -> torch.Tensor:
    """Merge two partial softmax attentions over disjoint key sets through their log-sum-exps.

    The blend is fp32 (weights from the fp32 lse), the result in out_p's dtype and out_s's memory layout.
    """
    w_p = torch.sigmoid(lse_p - lse_s).unsqueeze(-1)  # = exp(lse_p - logaddexp(lse_p, lse_s))
    return torch.lerp(out_s.float(), out_p.float(), w_p).to(out_p.dtype)


def static_decode(state: HydragenPrefix, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  scale: float, end: int | None = None) -> torch.Tensor:  # fmt: skip
    """One decode step of one layer through the static cache at `state.slot`, all on the device (what a graph holds).

    The suffix part reads slots [0, end) (all when None); `end` must lie past the slot.
    """
    kb, vb = state.suffix[layer]
    kb.index_copy_(2, state.slot, key)
    vb.index_copy_(2, state.slot, value)
    out_p, lse_p = prefix_attention(query, *state.layers[layer], scale)
    out_s, lse_s = masked_suffix_attention(query, kb[:, :, :end], vb[:, :, :end], state.bias[:end], scale)
    return combine(out_p, lse_p, out_s, lse_s)


# Slots per decode graph's read: a step reads its filled slots rounded up to this, so over U + G slots
# it reads about half a bucket more than it must, for ceil((U + G) / bucket) graphs per layer.
DECODE_BUCKET = 32


class DecodeGraphs:
    """Per layer and read length (`HydragenPrefix.read_end`), a CUDA graph of `static_decode`; captured on first use.

    The graphs share one set of input tensors and one memory pool: they replay one after another on
    one stream, and every output stays held. A capture that fails turns the graphs off (`error` says
    why); decode runs eagerly.
    """

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream()  # captures run on a stream of their own
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.entries: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.error: str | None = None

    def run(self, state: HydragenPrefix, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            scale: float) -> torch.Tensor | None:  # fmt: skip
        """The layer's decode attention [N, H, 1, D] by graph replay, or None where graphs are off."""
        if self.error is not None:
            return None
        if self.inputs is None:
            self.inputs = (query.clone(), key.clone(), value.clone())
        torch._foreach_copy_(self.inputs, (query, key, value))  # one launch for the three inputs
        where = (layer, state.read_end())
        entry = self.entries.get(where)
        if entry is None:
            entry = self._capture(state, where, scale)
            if entry is None:
                return None
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, state: HydragenPrefix, where: tuple[int, int], scale: float) -> tuple | None:
        q, k, v = self.inputs
        side = self.side
        side.wait_stream(torch.cuda.current_stream(q.device))
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(side):
                static_decode(state, where[0], q, k, v, scale, where[1])  # warm-up: lazy inits stay out
                side.synchronize()
                graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                try:
                    out = static_decode(state, where[0], q, k, v, scale, where[1])
                finally:
                    graph.capture_end()
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # an op that cannot be captured here: eager decode, same maths
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            torch.cuda.current_stream(q.device).wait_stream(side)
            return None
        torch.cuda.current_stream(q.device).wait_stream(side)
        self.entries[where] = (graph, out)
        return self.entries[where]


def hydragen_attention(query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None,
                       prefix: tuple[torch.Tensor, torch.Tensor], scale: float, groups: int) -> torch.Tensor:  # fmt: skip
    """[N, H, L, D] attention over [prefix; own suffix] (suffix causal, may be empty): [N, H, L, D]."""
    out_p, lse_p = prefix_attention(query, prefix[0], prefix[1], scale)
    if key is None or key.shape[-2] == 0:
        return out_p
    out_s, lse_s = suffix_attention(query, key, value, scale, groups)
    return combine(out_p, lse_p, out_s, lse_s)


def _hydragen_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      hydragen_prefix: HydragenPrefix | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    state = hydragen_prefix
    if state is not None and state.collecting:
        state.keep_prefix(module.layer_idx, key, value)
    if state is None or state.collecting or not state.layers:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    i = module.layer_idx
    if state.suffix:  # the static suffix cache: HF passed this call's keys/values only
        if state.graphs is not None and query.shape[2] == 1:
            out = state.graphs.run(state, i, query, key, value, scale)
            if out is not None:
                return out.transpose(1, 2), None  # [N, 1, H, D], contiguous
        key, value = state.write(i, key, value)
    out = hydragen_attention(query, key, value, state.layers[i], scale, module.num_key_value_groups)
    return out.transpose(1, 2).contiguous(), None  # a no-op copy on the fast paths: already [N, L, H, D] in memory


def _noattention_forward(module: torch.nn.Module, query: torch.Tensor, key: Any, value: Any, attention_mask: Any,
                         **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None


def register() -> None:
    """Make `hydragen` and `noattention` valid attn_implementation names (idempotent)."""
    AttentionInterface.register("hydragen", _hydragen_forward)
    AttentionInterface.register("noattention", _noattention_forward)


def standard_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                       causal: bool = True) -> torch.Tensor:  # fmt: skip
    """The reference: SDPA over the full KV [N, Hkv, P+U, D] (GQA expanded), bottom-right causal."""
    groups = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    lq, lk = query.shape[-2], k.shape[-2]
    mask = None
    if causal and lq > 1:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril(lk - lq)
    return torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=mask, scale=scale)


def self_check(device: torch.device, dtype: torch.dtype) -> float:
    """Max abs difference of hydragen against standard attention on small random problems here.

    Covers the suffix prefill and decode steps through a static suffix cache (strided views), MHA and GQA.
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    diffs = []
    for n, h, hkv, p, u, d in ((3, 4, 2, 37, 5, 16), (2, 4, 4, 19, 3, 16)):
        state = HydragenPrefix([(mk(1, hkv, p, d), mk(1, hkv, p, d))])
        state.allocate(n, u + 2)
        sk, sv = mk(n, hkv, u + 2, d), mk(n, hkv, u + 2, d)
        for start, lq in ((0, u), (u, 1), (u + 1, 1)):  # the suffix prefill, then two decode steps
            q, end = mk(n, h, lq, d), start + lq
            state.filled = start
            k, v = state.write(0, sk[:, :, start:end], sv[:, :, start:end])
            pk, pv = state.layers[0]
            full = lambda a, b: torch.cat([a.expand(n, -1, -1, -1), b[:, :, :end]], 2)  # noqa: E731
            ref = standard_attention(q, full(pk, sk), full(pv, sv), d**-0.5)
            got = hydragen_attention(q, k, v, (pk, pv), d**-0.5, h // hkv)
            diffs.append((ref.float() - got.float()).abs().max())
    return float(torch.stack(diffs).max())  # NaN propagates: a NaN fails the caller's bound
