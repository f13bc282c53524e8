"""HF transformers engines: `generate` on token ids, and the text-generation pipeline (text in, text out)."""

from __future__ import annotations

import gc
import time
from importlib.metadata import version
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, pipeline

from engines.base import Engine, GenerateResult, LoadInfo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class StepClock(StoppingCriteria):
    """Never stops generation; records when each token was produced (and the last sequences)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last_ids: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.times.append(time.perf_counter())
        self.last_ids = input_ids
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFGenerate(Engine):
    name = "hf-generate"

    def load(self, model_dir: str, device: str) -> LoadInfo:
        t0 = time.perf_counter()
        self.device = torch.device("cuda" if device == "cuda" else device)
        precision = self.config.get("precision") or "fp32"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=DTYPES[precision], attn_implementation=self.config.get("attention") or "sdpa"
        ).to(self.device)
        self.model.eval()
        self.pad_id = self.model.config.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.model.config.eos_token_id if isinstance(self.model.config.eos_token_id, int) else 0
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return LoadInfo(
            load_s=time.perf_counter() - t0,
            device=str(self.device),
            dtype=precision,
            weight_bytes=weight_bytes,
            versions={"torch": torch.__version__, "transformers": version("transformers")},
            extra={"torch_threads": torch.get_num_threads()},
        )

    def _generate_kwargs(self, n: int, clock: StepClock) -> dict[str, Any]:
        # min = max new tokens: EOS cannot end a sequence early, so every engine makes the same work.
        return dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=self.pad_id,
                    stopping_criteria=StoppingCriteriaList([clock]))  # fmt: skip

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        lengths = {len(p) for p in prompts}
        if len(lengths) != 1:
            raise ValueError("hf-generate expects prompts of one length (the workloads make them so)")
        ids = torch.tensor(prompts, device=self.device)
        clock = StepClock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **self._generate_kwargs(max_new_tokens, clock)
            )
        tokens = out[:, ids.shape[1] :].tolist()  # .tolist() synchronises the device
        return _result(tokens, t0, clock)

    def logprobs(self, window: list[int], context_len: int) -> list[float]:
        from engines.quality.perplexity import HFLogprobs

        return HFLogprobs(self.model, None, self.device)(window, context_len)

    def sample(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        if temperature == 0:
            return self.generate(prompts, max_new_tokens).tokens
        ids = torch.tensor(prompts, device=self.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=True, temperature=temperature, top_p=0.95, pad_token_id=self.pad_id)  # fmt: skip
        return out[:, ids.shape[1] :].tolist()

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, torch.OutOfMemoryError) or super().is_oom(exc)

    def release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def unload(self) -> None:
        self.model = None
        self.release_memory()


class HFPipeline(HFGenerate):
    """The text-generation pipeline: prompts go in as text and come out as text, as users call it."""

    name = "hf-pipeline"
    takes_text = True

    def load(self, model_dir: str, device: str) -> LoadInfo:
        info = super().load(model_dir, device)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.pipe = pipeline("text-generation", model=self.model, tokenizer=tokenizer)
        self._texts: dict[tuple[int, ...], str] = {}
        return info

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        # Turning workload ids into text is preparation, not pipeline work: cached after warm-up.
        texts = [self._texts.setdefault(tuple(p), self.tokenizer.decode(p)) for p in prompts]
        clock = StepClock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            outputs = self.pipe(texts, batch_size=len(texts), return_full_text=False,
                                **self._generate_kwargs(max_new_tokens, clock))  # fmt: skip
        assert len(outputs) == len(prompts) and clock.last_ids is not None
        # Token counts come from the ids the model produced: re-encoding the text could merge differently.
        full = clock.last_ids
        prompt_len = full.shape[1] - max_new_tokens
        if prompt_len != len(prompts[0]):
            raise RuntimeError(f"the pipeline saw {prompt_len} prompt tokens, the workload gave {len(prompts[0])}")
        return _result(full[:, prompt_len:].tolist(), t0, clock)


def _result(tokens: list[list[int]], t0: float, clock: StepClock) -> GenerateResult:
    times = clock.times
    steps = [b - a for a, b in zip(times, times[1:])]
    return GenerateResult(tokens=tokens, ttft_s=times[0] - t0 if times else None, step_times_s=steps or None)
