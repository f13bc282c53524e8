"""llama.cpp speculative decoding, greedy and batched: drafts verified for the whole batch in one llama_decode.

llama-cpp-python exposes draft decoding through its high-level `Llama(draft_model=...)`, one
sequence at a time, with prompt lookup as its one concrete draft. This adapter runs the same greedy
algorithm on the low-level API the `llama.cpp` engine already uses, for a batch, with two proposers:
    ngram=N       each sequence proposes up to N tokens that followed the first earlier occurrence
                  of its last n-gram (HF's prompt lookup: n-grams of ngram_max tokens down to 1)
    draft=MODEL   a second llama.cpp model (an HF model converted to GGUF at the run's quant, e.g.
                  tiny-draft) drafts draft_tokens tokens for every sequence, one batched decode each
Then one llama_batch feeds each sequence's last token and its drafts with logits on. A sequence
keeps the drafts that equal the target's argmax, plus the target's own next token, and drops the
rejected positions from its KV cache (llama_memory_seq_rm); the draft model drops them from its
own. Greedy, so the tokens are plain decoding's, up to kernel rounding (a multi-token verify
computes its logits in another order); the runner checks and reports it. `spec=none` is the plain
engine with the same time breakdown: the matched baseline.
"""

from __future__ import annotations

import time
from typing import Any

from engines.adapters.llamacpp.bindings import ll
from engines.adapters.llamacpp.engine import LlamaCpp, _check_call
from engines.base import GenerateResult, SpecError
from engines.models.drafts import draft_path
from engines.study.speculation import SPEC_OPTIONS, parse_spec, spec_options


def propose_ngram(tokens: list[int], k: int, ngram_max: int) -> list[int]:
    """Up to k tokens that followed the first earlier occurrence of the context's last n-gram (n = ngram_max..1)."""
    if k < 1 or len(tokens) < 2:
        return []
    tokens = list(tokens)
    for n in range(min(ngram_max, len(tokens) - 1), 0, -1):
        pattern, last = tokens[-n:], len(tokens) - 1 - n  # an occurrence must have a next token: start <= last
        start = -1
        while True:
            try:
                start = tokens.index(pattern[0], start + 1, last + 1)
            except ValueError:
                break
            if tokens[start : start + n] == pattern:
                return tokens[start + n : start + n + k]
    return []


class DraftModel:
    """A second llama.cpp model that drafts for the batch. Between steps its KV cache holds a prefix of each
    context (`kv_len`); `propose` first feeds it the rest."""

    def __init__(self, ref: str, config: dict[str, Any], device: str) -> None:
        self.engine = LlamaCpp({**config, "spec": None})
        self.engine.load(draft_path(ref), device)
        self.kv_len: list[int] = []

    def prefill(self, prompts: list[list[int]], room: list[int]) -> None:
        e = self.engine
        e._ensure_capacity(room)
        ll.llama_memory_clear(ll.llama_get_memory(e.ctx), True)
        e._prefill(prompts)
        self.kv_len = [len(p) for p in prompts]

    def propose(self, ctx: list[list[int]], active: list[int], ks: list[int]) -> list[list[int]]:
        """ks[i] greedy tokens for sequence active[i]: first the tokens its cache lacks, then one decode per token."""
        e = self.engine
        props: list[list[int]] = [[] for _ in active]
        feed = {s: ctx[s][self.kv_len[s] :] for s, k in zip(active, ks) if k}  # never empty: the pending last token
        for step in range(max(ks, default=0)):
            rows = [i for i, (s, k) in enumerate(zip(active, ks)) if k > step]
            if not rows:
                break
            fed = 0
            for i in rows:
                s = active[i]
                toks = feed[s] if step == 0 else [props[i][-1]]
                want = [0] * (len(toks) - 1) + [1]
                e._fill(fed, toks, range(self.kv_len[s], self.kv_len[s] + len(toks)), [s] * len(toks), want)
                self.kv_len[s] += len(toks)
                fed += len(toks)
            e._decode(fed)
            for i, token in zip(rows, e._argmax(len(rows))):
                props[i].append(int(token))
        return props

    def accept(self, s: int, ctx_len: int, accepted: int) -> None:
        """After verification: the cache keeps the context before this step and the drafts that were accepted."""
        keep = min(self.kv_len[s], ctx_len + accepted)  # at most what was fed: the last draft never is
        if keep < self.kv_len[s]:
            ll.llama_memory_seq_rm(ll.llama_get_memory(self.engine.ctx), s, keep, -1)
            self.kv_len[s] = keep

    def unload(self) -> None:
        self.engine.unload()


class LlamaCppSpeculative(LlamaCpp):
    def __init__(self, config: dict[str, Any]):
        self.spec = parse_spec(config.get("spec"))
        opts = dict(config.get("options") or {})
        so = spec_options(opts)
        self.ngram_max, self.draft_tokens = so["ngram_max"], so["draft_tokens"]
        self.draft: DraftModel | None = None
        # Our options are not the llama.cpp engine's (whose parser refuses unknown keys).
        super().__init__({**config, "options": {k: v for k, v in opts.items() if k not in SPEC_OPTIONS}})

    def load(self, model_dir: str, device: str):
        info = super().load(model_dir, device)
        if self.spec.method == "draft":
            self.draft = DraftModel(self.spec.draft, self.config, device)
            theirs = self.draft.engine.n_vocab
            if theirs != self.n_vocab:
                raise SpecError(f"draft model {self.spec.draft} has a vocabulary of {theirs}, the target {self.n_vocab}: "
                                "speculative decoding needs the same tokenizer (use draft=tiny-draft with tiny)")  # fmt: skip
            info.extra.update({"draft_gguf": self.draft.engine.gguf_path, "draft_tokens": self.draft_tokens,
                               "draft_weight_bytes": int(ll.llama_model_size(self.draft.engine.model))})  # fmt: skip
        info.extra.update({"spec": str(self.spec), "ngram_max": self.ngram_max})
        return info

    def unload(self) -> None:
        if self.draft is not None:
            self.draft.unload()
            self.draft = None
        super().unload()

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        if self.spec.method == "none":
            t0 = time.perf_counter()
            res = super().generate(prompts, max_new_tokens)
            res.extra.update({"spec_method": "none", "time_draft_s": 0.0, "spec_steps": max_new_tokens,
                              "time_verify_s": res.extra["prefill_s"] + res.extra["decode_s"],
                              "time_total_s": time.perf_counter() - t0})  # fmt: skip
            return res
        t0 = time.perf_counter()  # one clock for TTFT, the phases and the runner's latency
        _check_call(prompts, max_new_tokens)
        k, b = self.spec.tokens or self.draft_tokens, len(prompts)
        lens = [len(p) for p in prompts]
        self._ensure_capacity([n + max_new_tokens for n in lens])
        if b * (1 + k) > self.batch_cap:
            raise SpecError(f"a verify step of {b} sequences x (1 + {k}) tokens exceeds llama.cpp's batch of "
                            f"{self.batch_cap}; use a smaller --batch, or fewer draft tokens")  # fmt: skip
        mem = ll.llama_get_memory(self.ctx)
        ll.llama_memory_clear(mem, True)
        ll.llama_perf_context_reset(self.ctx)
        nxt = self._prefill(prompts)
        t_first = time.perf_counter()
        perf = ll.llama_perf_context(self.ctx)
        pre_s = t_first - t0
        c = {"proposed": 0, "accepted": 0, "drafts": 0, "steps": 0, "draft_s": 0.0, "verify_s": 0.0}
        if self.draft is not None:
            self.draft.prefill(prompts, [n + max_new_tokens + k for n in lens])
            c["draft_s"] += time.perf_counter() - t_first
        ctx = [list(p) + [int(t)] for p, t in zip(prompts, nxt)]  # each context ends in a token not yet in the KV
        out = [[int(t)] for t in nxt]
        kv_len = list(lens)
        while active := [s for s in range(b) if len(out[s]) < max_new_tokens]:
            t = time.perf_counter()
            ks = [min(k, max_new_tokens - len(out[s]) - 1) for s in active]
            if self.draft is not None:
                props = self.draft.propose(ctx, active, ks)
            else:
                props = [propose_ngram(ctx[s], n, self.ngram_max) for s, n in zip(active, ks)]
            c["draft_s"] += time.perf_counter() - t
            fed = 0
            for s, pr in zip(active, props):
                toks = [ctx[s][-1], *pr]
                self._fill(fed, toks, range(kv_len[s], kv_len[s] + len(toks)), [s] * len(toks), [1] * len(toks))
                fed += len(toks)
            t = time.perf_counter()
            self._decode(fed)
            preds = self._argmax(fed)
            c["verify_s"] += time.perf_counter() - t
            c["steps"] += 1
            row = 0
            for s, pr in zip(active, props):
                got = preds[row : row + 1 + len(pr)]
                row += 1 + len(pr)
                a = 0
                while a < len(pr) and pr[a] == got[a]:
                    a += 1
                kv_len[s] += 1 + a  # the fed last token and the accepted drafts stay in the KV cache
                if a < len(pr):
                    ll.llama_memory_seq_rm(mem, s, kv_len[s], -1)
                if self.draft is not None:
                    self.draft.accept(s, len(ctx[s]), a)
                new = [*pr[:a], got[a]]
                ctx[s] += new
                out[s] += new
                c["proposed"] += len(pr)
                c["accepted"] += a
                c["drafts"] += bool(pr)
        wall = time.perf_counter() - t0
        return GenerateResult(
            tokens=out,
            ttft_s=pre_s,
            step_times_s=[],
            extra={
                "prefill_s": pre_s, "perf_prefill_s": (perf.t_p_eval_ms + perf.t_eval_ms) / 1e3, "wall_s": wall,
                "spec_method": self.spec.method,
                "spec_draft_tokens": c["proposed"], "spec_accepted_tokens": c["accepted"], "spec_drafts": c["drafts"],
                "spec_steps": c["steps"], "spec_k": k, "time_draft_s": c["draft_s"],
                "time_verify_s": pre_s + c["verify_s"], "time_total_s": wall, "n_ctx": self.n_ctx,
            },
        )  # fmt: skip
