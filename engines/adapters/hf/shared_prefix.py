"""Shared-prefix engines (seed 003): one prompt of P tokens, N completions with their own suffixes.

They find the shared prefix themselves (the longest common prefix of the batch, at least one
token left per sequence), prefill it once with batch 1, then run the N suffixes and a greedy decode
loop of their own (EOS ignored, exactly max_new_tokens tokens):
    hf-noshare     no sharing: the full prompts, batch N, the same loop (seed 003's hydragen_noshared)
    hf-prefix-kv   the prefix KV cache copied to every sequence (HF cannot share the memory)
    hydragen       the prefix KV kept once; attention split by engines.adapters.hf.hydragen; the suffix KV in a
                   preallocated cache of U + G slots written in place, with no HF cache (as
                   noattention), each layer's decode attention a CUDA graph on a GPU;
                   `--opt cache=dynamic` keeps the suffix in HF's DynamicCache (eager) instead
    noattention    attention skipped and no KV cache: the attention-free upper bound (lossy)
The issue's no-sharing baseline is plain hf-generate on the full prompts; hf-noshare separates
what sharing gains from what the leaner loop gains.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DynamicCache

from engines.adapters.hf import hydragen
from engines.adapters.hf.engine import HFGenerate
from engines.base import GenerateResult, LoadInfo, SpecError


def common_prefix_len(prompts: list[list[int]]) -> int:
    """Longest common prefix of all prompts, leaving every prompt at least one token of its own."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


class _SharedPrefix(HFGenerate):
    attn = "sdpa"
    share = True
    prefix_read_once = False  # a decode step reads the prefix KV once for all N sequences (the roofline's bytes)

    caches: tuple[str, ...] = ("dynamic",)  # values of --opt cache, the first the default

    def load(self, model_dir: str, device: str) -> LoadInfo:
        hydragen.register()
        info = super().load(model_dir, device)
        asked = (self.config.get("options") or {}).get("cache")
        self.opts["cache"] = self.caches[0] if asked is None else self.opts["cache"]  # also in info.extra
        if self.opts["cache"] not in self.caches or self.opts.get("compile", "off") != "off":
            allowed = "leave out --opt cache/compile" if len(self.caches) == 1 else \
                f"--opt cache={'|'.join(self.caches)} only, no compile"  # fmt: skip
            raise SpecError(f"{self.name} runs its own decode loop; {allowed}")
        attn = [m for m in self.model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]
        if not attn:
            raise SpecError(f"{self.name} needs a Llama-style HF model (attention modules with layer_idx); "
                            f"{type(self.model).__name__} has none")  # fmt: skip
        if self.attn != "sdpa":
            self.model.set_attn_implementation(self.attn)
        info.extra["attn_implementation"] = self.attn
        if self.attn == "hydragen":  # the kernels this device picks, checked against standard attention
            diff = hydragen.self_check(self.device, self.model.dtype)
            info.extra["hydragen_self_check_max_abs"] = diff
            if not diff <= (1e-3 if self.model.dtype == torch.float32 else 5e-2):  # NaN fails too
                raise RuntimeError(f"hydragen attention differs from standard attention by {diff:.2e} on {self.device} "
                                   f"({self.model.dtype}); its numbers would be wrong, so the run stops")  # fmt: skip
        return info

    def _forward(self, ids: torch.Tensor, start: int, cache: Any, **kw: Any) -> torch.Tensor:
        pos = torch.arange(start, start + ids.shape[1], device=self.device)[None, :]
        out = self.model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=cache is not None,
                         logits_to_keep=1, **kw)  # fmt: skip
        return out.logits[:, -1, :].argmax(-1)

    def _prefill(self, ids: torch.Tensor, p: int, max_new_tokens: int) -> tuple[torch.Tensor, Any, dict[str, Any]]:
        """Prefix once (batch 1), then the suffixes: (first tokens, cache, extra kwargs for decode)."""
        cache = DynamicCache(config=self.model.config)
        if p:
            self._forward(ids[:1, :p], 0, cache)
            cache.batch_repeat_interleave(ids.shape[0])
        return self._forward(ids[:, p:], p, cache), cache, {}

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        if len({len(p) for p in prompts}) != 1:
            raise ValueError(f"{self.name} expects prompts of one length (the workloads make them so)")
        p = common_prefix_len(prompts) if self.share else 0
        done = False
        try:
            res = self._measured(len(prompts), len(prompts[0]), max_new_tokens, lambda: self._loop(prompts, p, max_new_tokens),
                                 kv_shared=p if self.prefix_read_once else 0)  # fmt: skip
            done = True
        finally:
            extra = self._loop_extra(keep=done)  # a failed call drops its state (an OOM frees its memory)
        res.extra.update(shared_prefix_len=p, completions=len(prompts), **extra)
        return res

    def _loop_extra(self, keep: bool) -> dict[str, Any]:
        return {}

    def _loop(self, prompts: list[list[int]], p: int, max_new_tokens: int) -> tuple[list[list[int]], float, None]:
        ids = torch.tensor(prompts, device=self.device)
        pos = ids.shape[1]
        t0 = time.perf_counter()
        with torch.inference_mode():
            nxt, cache, kw = self._prefill(ids, p, max_new_tokens)
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # the first tokens exist now
            ttft = time.perf_counter() - t0
            out = [nxt]
            for _ in range(max_new_tokens - 1):
                nxt = self._forward(nxt[:, None], pos, cache, **kw)
                pos += 1
                out.append(nxt)
            tokens = torch.stack(out, dim=1).tolist()
        return tokens, ttft, None


class HFNoShare(_SharedPrefix):
    name = "hf-noshare"
    share = False


class HFPrefixKV(_SharedPrefix):
    name = "hf-prefix-kv"


class Hydragen(_SharedPrefix):
    name = "hydragen"
    attn = "hydragen"
    prefix_read_once = True
    caches = ("static", "dynamic")
    graphs = True  # CUDA graphs of the decode attention with the static cache (benchmarks turn them off to compare)
    # The static cache's state (prefix and suffix buffers, decode graphs) is kept for the next call of the
    # same shape, as a server keeps its buffers: the runner's warm-up pays for allocating and capturing,
    # the timed calls do not. A call of another shape, or a failed call, drops it first.
    _state: hydragen.HydragenPrefix | None = None
    _state_key: tuple | None = None
    _reused = False

    def _prefill(self, ids: torch.Tensor, p: int, max_new_tokens: int) -> tuple[torch.Tensor, Any, dict[str, Any]]:
        if not p:
            self._drop_state()
            return super()._prefill(ids, p, max_new_tokens)
        static = self.opts["cache"] == "static"
        key = (ids.shape[0], p, ids.shape[1] - p + max_new_tokens, self.graphs)
        self._reused = static and self._state is not None and self._state_key == key
        if not self._reused:
            self._drop_state()  # before this call allocates: the last shape's memory is free again
        state = self._state if self._reused else hydragen.HydragenPrefix()
        state.collecting = True  # the prefix prefill (batch 1, plain causal SDPA) leaves its keys/values in state
        try:
            self._forward(ids[:1, :p], 0, None, hydragen_prefix=state)
        finally:
            state.collecting = False
        kw = {"hydragen_prefix": state}
        if static:
            # Suffix and generated tokens in place (engines.adapters.hf.hydragen); the model keeps no cache of its own.
            if not self._reused:
                state.allocate(ids.shape[0], key[2], graphs=self.graphs)
            self._state, self._state_key = state, key
            return self._forward(ids[:, p:], p, None, **kw), None, kw
        cache = DynamicCache(config=self.model.config)  # the suffixes and generated tokens only
        return self._forward(ids[:, p:], p, cache, **kw), cache, kw

    def _drop_state(self) -> None:
        self._state = self._state_key = None

    def _forward(self, ids: torch.Tensor, start: int, cache: Any, **kw: Any) -> torch.Tensor:
        state = kw.get("hydragen_prefix")
        if state is not None and state.suffix and not state.collecting:
            state.begin(start - len(state))  # suffix slots before this call's tokens
        return super()._forward(ids, start, cache, **kw)

    def _loop_extra(self, keep: bool) -> dict[str, Any]:
        """How the call's decode attention ran: graphs, or eager (and why); whether it reused the last call's state."""
        state = self._state
        if not keep:
            self._drop_state()
        if self.opts["cache"] != "static":
            return {"hydragen_decode": f"eager, cache={self.opts['cache']}"}
        if state is None:
            return {"hydragen_decode": "no shared prefix: plain SDPA"}
        extra = {"hydragen_state": "reused" if self._reused else "new"}
        if state.graphs is None:
            return {"hydragen_decode": "eager, static cache", **extra}
        if state.graphs.error:
            return {"hydragen_decode": "eager, static cache", "hydragen_graph_error": state.graphs.error, **extra}
        layers, reads = ({x[i] for x in state.graphs.entries} for i in (0, 1))
        return {"hydragen_decode": f"cuda graphs x {len(layers)} layers x {len(reads)} read lengths, static cache",
                **extra}  # fmt: skip


class NoAttention(_SharedPrefix):
    name = "noattention"
    attn = "noattention"

    def load(self, model_dir: str, device: str) -> LoadInfo:
        info = super().load(model_dir, device)
        self.kv_per_token = 0  # no KV cache at all: a decode step reads the weights alone (the roofline's bytes)
        return info

    def _prefill(self, ids: torch.Tensor, p: int, max_new_tokens: int) -> tuple[torch.Tensor, Any, dict[str, Any]]:
        if p:
            self._forward(ids[:1, :p], 0, None)  # the prefix's linear layers still run once
        return self._forward(ids[:, p:], p, None), None, {}
