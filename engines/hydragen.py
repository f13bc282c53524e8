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
(the prefix's own prefill). `noattention` returns zeros: the attention-free upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

_MATH_CHUNK = 1 << 24  # score elements per chunk of the fallback (64 MiB in fp32)


@dataclass
class HydragenPrefix:
    """The shared prefix's keys and values, per layer, each [1, kv_heads, P, head_dim]."""

    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0


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

    `causal` aligns the mask bottom-right (query i sees keys up to i + Lk - Lq).
    """
    lq, lk = q.shape[-2], k.shape[-2]
    fused_causal = causal and lq == lk  # PyTorch's is_causal is top-left aligned: only safe when square
    if causal and lq == 1:
        causal = fused_causal = False  # one query sees every key
    if causal and not fused_causal:
        return _math_lse(q, k, v, scale, True)
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, fused_causal, scale=scale)
            return out, lse.float()
        if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, fused_causal, False, scale=scale)
            return res[0], res[1][..., :lq].float()
        if q.device.type == "cuda":
            res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, fused_causal, scale=scale)
            return res[0], res[1][..., :lq].float()  # the kernel pads the lse to a multiple of 32 queries
    except (RuntimeError, NotImplementedError):
        pass  # an unsupported shape or dtype for the fused kernel: the fallback is exact, only slower
    return _math_lse(q, k, v, scale, causal)


def prefix_attention(query: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """All N sequences' queries [N, H, L, D] against one prefix [1, Hkv, P, D], as one batch-1 attention."""
    n, h, lq, d = query.shape
    hkv = pk.shape[1]
    g = h // hkv
    # Query head j*g + i reads KV head j (HF's repeat_kv order): group the queries by KV head.
    q = query.view(n, hkv, g, lq, d).permute(1, 0, 2, 3, 4).reshape(1, hkv, n * g * lq, d)
    out, lse = attention_with_lse(q, pk, pv, scale)
    out = out.view(hkv, n, g, lq, d).permute(1, 0, 2, 3, 4).reshape(n, h, lq, d)
    lse = lse.view(hkv, n, g, lq).permute(1, 0, 2, 3).reshape(n, h, lq)
    return out, lse


def combine(out_p: torch.Tensor, lse_p: torch.Tensor, out_s: torch.Tensor, lse_s: torch.Tensor) -> torch.Tensor:
    """Merge two partial softmax attentions over disjoint key sets through their log-sum-exps."""
    w_p = torch.sigmoid(lse_p - lse_s)[..., None]  # = exp(lse_p - logaddexp(lse_p, lse_s))
    return (out_s.float() + (out_p.float() - out_s.float()) * w_p).to(out_s.dtype)


def hydragen_attention(query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None,
                       prefix: tuple[torch.Tensor, torch.Tensor], scale: float, groups: int) -> torch.Tensor:  # fmt: skip
    """[N, H, L, D] attention over [prefix; own suffix] (suffix causal, may be empty): [N, H, L, D]."""
    out_p, lse_p = prefix_attention(query, prefix[0], prefix[1], scale)
    if key is None or key.shape[-2] == 0:
        return out_p
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    out_s, lse_s = attention_with_lse(query, k, v, scale, causal=True)
    return combine(out_p, lse_p, out_s, lse_s)


def _hydragen_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      hydragen_prefix: HydragenPrefix | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    if hydragen_prefix is None or not hydragen_prefix.layers:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    prefix = hydragen_prefix.layers[module.layer_idx]
    out = hydragen_attention(query, key, value, prefix, scale, module.num_key_value_groups)
    return out.transpose(1, 2).contiguous(), None


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
    """Max abs difference of hydragen against standard attention on a small random problem here."""
    g = torch.Generator(device="cpu").manual_seed(0)
    n, h, hkv, p, u, lq, d = 3, 4, 2, 37, 5, 2, 16
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    q, pk, pv, sk, sv = mk(n, h, lq, d), mk(1, hkv, p, d), mk(1, hkv, p, d), mk(n, hkv, u, d), mk(n, hkv, u, d)
    ref = standard_attention(q, torch.cat([pk.expand(n, -1, -1, -1), sk], 2), torch.cat([pv.expand(n, -1, -1, -1), sv], 2),
                             d**-0.5)  # fmt: skip
    got = hydragen_attention(q, sk, sv, (pk, pv), d**-0.5, h // hkv)
    return float((ref.float() - got.float()).abs().max())
