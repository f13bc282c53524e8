"""HF speculative decoding: assisted generation with a draft model, or prompt lookup (n-gram), instrumented.

Transformers' assisted decoding loop (GenerationMixin._assisted_decoding) is used as it is; this
adapter only watches it: the candidate generator's `get_candidates` (draft time, tokens proposed)
and `update_candidate_strategy` (tokens accepted), and the target model's forward (verify time,
steps). `spec=none` runs plain greedy generate with the same forward clock, so the matched
baseline has a breakdown too. HF's assisted decoding takes one sequence at a time, so a batch of
B runs B calls (reported as `sequential`); the baseline batches them, as hf-generate does.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from engines.adapters.hf.engine import HFGenerate, StepClock
from engines.base import GenerateResult, LoadInfo, SpecError
from engines.models.drafts import draft_path
from engines.study.speculation import SPEC_OPTIONS, parse_spec, spec_options


class Clock:
    """Sums wall time spent inside wrapped calls; synchronises CUDA so GPU work is charged to its phase."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self.draft_s = self.verify_s = 0.0
        self.proposed = self.accepted = self.drafts = self.steps = 0

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class HFSpeculative(HFGenerate):
    name = "hf-generate"

    def load(self, model_dir: str, device: str) -> LoadInfo:
        self.spec = parse_spec(self.config.get("spec"))
        opts = dict(self.config.get("options") or {})
        # Our options are not HFGenerate's (whose parser refuses unknown keys).
        self.config = {**self.config, "options": {k: v for k, v in opts.items() if k not in SPEC_OPTIONS}}
        info = super().load(model_dir, device)
        if self.opts.get("cache", "dynamic") != "dynamic" and self.spec.method != "none":
            raise SpecError("HF assisted decoding needs the dynamic KV cache; leave out --opt cache=static")
        self.clock = Clock(self.device)
        so = spec_options(opts)
        self.draft_tokens, self.ngram_max = so["draft_tokens"], so["ngram_max"]
        self.assistant = None
        if self.spec.method == "draft":
            self.assistant = self._load_draft(self.spec.draft)
            info.extra["draft_params"] = sum(p.numel() for p in self.assistant.parameters())
        self._instrument()
        info.extra.update({"spec": str(self.spec), "draft_tokens": self.draft_tokens, "ngram_max": self.ngram_max})
        return info

    def _load_draft(self, ref: str):
        path = draft_path(ref)
        draft = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype).to(self.device).eval()
        mine, theirs = self.model.config.vocab_size, draft.config.vocab_size
        if mine != theirs:
            raise SpecError(f"draft model {ref} has a vocabulary of {theirs}, the target {mine}: "
                            "speculative decoding needs the same tokenizer (use draft=tiny-draft with tiny)")  # fmt: skip
        gc = draft.generation_config
        # A fixed number of draft tokens per step: HF's adaptive schedules carry state across calls,
        # so warm-up would change what the timed minibatches do.
        gc.num_assistant_tokens = self.draft_tokens
        gc.num_assistant_tokens_schedule = "constant"
        gc.assistant_confidence_threshold = 0.0
        return draft

    def _instrument(self) -> None:
        """Wrap the target's forward and HF's candidate generator so every phase is timed and counted."""
        clock, model = self.clock, self.model
        forward = model.forward

        @functools.wraps(forward)  # keeps the signature HF inspects (logits_to_keep support)
        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            t0 = clock.now()
            try:
                return forward(*args, **kwargs)
            finally:
                clock.verify_s += clock.now() - t0
                clock.steps += 1

        model.forward = timed_forward
        make_generator = model._get_candidate_generator

        def candidate_generator(*args: Any, **kwargs: Any) -> Any:
            gen = make_generator(*args, **kwargs)
            get, update = gen.get_candidates, gen.update_candidate_strategy

            def get_candidates(input_ids: torch.Tensor, *a: Any, **kw: Any) -> Any:
                t0 = clock.now()
                try:
                    cand, logits = get(input_ids, *a, **kw)
                finally:
                    clock.draft_s += clock.now() - t0
                proposed = cand.shape[1] - input_ids.shape[1]
                clock.proposed += proposed
                clock.drafts += proposed > 0
                return cand, logits

            def update_candidate_strategy(input_ids: torch.Tensor, scores: Any, num_matches: Any) -> Any:
                clock.accepted += int(num_matches)
                return update(input_ids, scores, num_matches)

            gen.get_candidates = get_candidates
            gen.update_candidate_strategy = update_candidate_strategy
            return gen

        model._get_candidate_generator = candidate_generator

    def _spec_kwargs(self) -> dict[str, Any]:
        if self.spec.method == "ngram":
            return {"prompt_lookup_num_tokens": self.spec.tokens, "max_matching_ngram_size": self.ngram_max}
        if self.spec.method == "draft":
            return {"assistant_model": self.assistant}
        return {}

    def _run_spec(self, prompts: list[list[int]], n: int) -> tuple[list[list[int]], float | None, None]:
        # HF: "assisted generate is only supported for batch_size = 1"
        groups = [prompts] if self.spec.method == "none" else [[p] for p in prompts]
        tokens: list[list[int]] = []
        ttft = None
        for group in groups:
            ids = torch.tensor(group, device=self.device)
            step_clock = StepClock(sync_first=self.device.type == "cuda")
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          **self._generate_kwargs(n, step_clock), **self._spec_kwargs())  # fmt: skip
            tokens += out[:, ids.shape[1] :].tolist()
            if ttft is None and step_clock.times:
                ttft = step_clock.times[0] - t0
        return tokens, ttft, None

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("hf-generate expects prompts of one length (the workloads make them so)")
        self.clock.reset()
        t_start = self.clock.now()
        res = self._measured(len(prompts), len(prompts[0]), max_new_tokens, lambda: self._run_spec(prompts, max_new_tokens))
        total = self.clock.now() - t_start
        c = self.clock
        extra: dict[str, Any] = {
            "spec_method": self.spec.method, "time_draft_s": c.draft_s, "time_verify_s": c.verify_s,
            "time_total_s": total, "spec_steps": c.steps, "sequential": self.spec.method != "none" and len(prompts) > 1,
        }  # fmt: skip
        if self.spec.method != "none":
            extra.update({"spec_draft_tokens": c.proposed, "spec_accepted_tokens": c.accepted, "spec_drafts": c.drafts,
                          "spec_k": self.spec.tokens or self.draft_tokens})  # fmt: skip
        res.extra.update(extra)
        return res

    def unload(self) -> None:
        self.assistant = None
        super().unload()
