"""codebench's decode loop for an HF model (the torch-compile engine): static KV cache, one-token
steps through a torch.compile'd forward (CUDA graphs with mode reduce-overhead), greedy argmax on
the device, and no host synchronisation until the last step: the host queues step after step while
the GPU works, so Python overhead hides behind the weight reads that bound decoding.

The prefill runs eagerly (one call per shape, no graph worth capturing). A new batch size or length
drops the old cache and compiled graphs (torch._dynamo.reset) before compiling for the new shape,
so the first minibatch of a cell pays the compilation and the runner's warm-up absorbs it.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class StaticDecoder:
    def __init__(self, model: Any, compile_mode: str | None, device: torch.device):
        self.model = model
        self.mode = None if compile_mode in (None, "off") else compile_mode
        self.device = device
        self.shape: tuple[int, int] | None = None
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.step: Any = None
        if self.mode:
            import torch._dynamo as dynamo

            # One compiled shape at a time, but never fall back to eager silently after many cells.
            for key in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo.config, key):
                    setattr(dynamo.config, key, max(64, getattr(dynamo.config, key)))

    def _forward(self, tok: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tok, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                         use_cache=True)  # fmt: skip
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def prepare(self, batch: int, max_len: int) -> bool:
        """Cache and compiled step for this shape; True when they were (re)built."""
        from transformers import StaticCache

        if self.shape == (batch, max_len):
            self.cache.reset()
            return False
        self.cache = self.step = self.mask = None
        if self.mode:
            torch._dynamo.reset()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = StaticCache(config=self.model.config, max_cache_len=max_len)
        self.mask = torch.zeros(batch, max_len, dtype=torch.long, device=self.device)
        if self.mode:
            torch._dynamo.mark_static_address(self.mask)  # updated in place between steps, never copied
            self.step = torch.compile(self._forward, mode=self.mode, dynamic=False)
        else:
            self.step = self._forward
        self.shape = (batch, max_len)
        return True

    def generate(self, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, float, list[float]]:
        """(tokens [batch, n], seconds to the first token, per-step seconds) for greedy decoding."""
        batch, length = ids.shape
        self.prepare(batch, length + n)
        cuda = self.device.type == "cuda"
        graphs = cuda and self.mode in ("reduce-overhead", "max-autotune")
        mask = self.mask
        mask.zero_()
        mask[:, :length] = 1
        out = torch.empty(batch, n, dtype=torch.long, device=self.device)
        marks: list[Any] = []

        def mark() -> None:
            if cuda:
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                marks.append(e)
            else:
                marks.append(time.perf_counter())

        mark()
        pos = torch.arange(length, device=self.device).expand(batch, length)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                            use_cache=True, logits_to_keep=1).logits  # fmt: skip
        out[:, :1] = logits[:, -1].argmax(-1, keepdim=True)
        mark()
        pos = torch.full((batch, 1), length, dtype=torch.long, device=self.device)
        for i in range(1, n):
            mask[:, length + i - 1] = 1  # the token fed now sits at position length + i - 1
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out[:, i : i + 1] = self.step(out[:, i - 1 : i], mask, pos)
            pos += 1
            mark()
        if cuda:
            marks[-1].synchronize()
            times = [0.0] + [marks[0].elapsed_time(e) / 1000 for e in marks[1:]]
        else:
            times = [t - marks[0] for t in marks]
        steps = [b - a for a, b in zip(times[1:], times[2:])]
        return out, times[1], steps
