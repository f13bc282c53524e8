"""HF transformers engines: `generate` on token ids, the text-generation pipeline (text in, text out),
and torch-compile (the same model decoded by codebench's static-cache loop, engines/adapters/hf/decode.py).

Options and combination rules: engines/adapters/hf/options.py. Model building (checkpoints, random presets,
bitsandbytes): engines/adapters/hf/build.py. Every minibatch reports in GenerateResult.extra the GPU energy
(NVML), throttling, the decode roofline figures (engines/measure/roofline.py) and, for compiled runs, the
compile time of its shape (first generate of a shape minus the second).
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from importlib.metadata import version
from typing import Any

import torch
from transformers import AutoTokenizer, StoppingCriteria, StoppingCriteriaList, pipeline

from engines.adapters.hf import ENGINES as FAMILY
from engines.adapters.hf import build as hf_build
from engines.adapters.hf import options as hf_options
from engines.base import Engine, GenerateResult, LoadInfo, SpecError
from engines.measure import gpu_meter, roofline
from engines.models import presets

DTYPES = hf_build.DTYPES
_DECLARED = {info.name: info.tensor_parallel for info in FAMILY}  # which of these split by torchrun


class StepClock(StoppingCriteria):
    """Never stops generation; records when each token was produced (and the last sequences)."""

    def __init__(self, sync_first: bool = False) -> None:
        self.times: list[float] = []
        self.last_ids: torch.Tensor | None = None
        self.sync_first = sync_first  # on a GPU: the first token is there only once the device says so

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self.sync_first and not self.times:
            torch.cuda.synchronize(input_ids.device)
        self.times.append(time.perf_counter())
        self.last_ids = input_ids
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _flash_takes_mask(device: torch.device) -> bool:
    """Does PyTorch's flash SDPA kernel accept an explicit mask here? (No on CUDA so far; yes on the CPU.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 1, 8, 64, dtype=torch.bfloat16, device=device)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool, device=device))
        return True
    except RuntimeError:
        return False


class HFGenerate(Engine):
    name = "hf-generate"

    # --- loading ----------------------------------------------------------------------

    def load(self, model_dir: str, device: str) -> LoadInfo:
        t0 = time.perf_counter()
        self.device = torch.device(device)
        try:
            self.opts = hf_options.parse(self.name, self.config.get("options") or {}, device)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        precision = self.config.get("precision") or "fp32"
        attention = self.config.get("attention") or "sdpa"
        quant = self.config.get("quant")
        self.quant = None if quant in (None, "none") else quant
        self.tp = int(self.config.get("tp") or 1)  # > 1: this process is one rank (engines/harness/tp.py)
        if self.tp > 1 and (self.quant or _DECLARED.get(self.name) != "torchrun"):
            what = f"{self.name} with {self.quant}" if self.quant else self.name
            raise SpecError(f"{what} does not run tensor-parallel; use --tp 1")
        self.dtype = DTYPES[precision]
        self.kernel = hf_options.SDPA_FORCED.get(attention)
        impl = "sdpa" if attention.startswith("sdpa") else attention
        self.model = self._build(model_dir, impl)
        self.pad_id = self.model.config.pad_token_id
        if self.pad_id is None:
            eos = self.model.config.eos_token_id
            self.pad_id = eos if isinstance(eos, int) else 0
        total, read = hf_build.weight_bytes(self.model)
        try:
            layout = presets.kv_layout(self.model.config.to_dict())
        except (KeyError, TypeError):  # an architecture with other config names: the roofline counts weights only
            layout = {"layers": 0, "kv_heads": 0, "head_dim": 0, "window": None}
        self.window = layout["window"]
        kv_dtype_bytes = torch.finfo(self.dtype).bits // 8
        self.kv_per_token = roofline.kv_bytes_per_token(layout["layers"], layout["kv_heads"], layout["head_dim"],
                                                        kv_dtype_bytes)  # fmt: skip
        self.weight_read_bytes = read
        self.meter: gpu_meter.GpuMeter | None = None
        gpu_name = None
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            gpu_name = props.name
            self.meter = gpu_meter.GpuMeter(str(getattr(props, "uuid", "") or ""), self.device.index or 0)
            if self.tp > 1 and os.environ.get("RANK") == "0":  # rank 0 reports energy of every GPU of the group
                uuids = [str(getattr(torch.cuda.get_device_properties(i), "uuid", "") or "") for i in range(self.tp)]
                self.meter = gpu_meter.GroupMeter([gpu_meter.GpuMeter(u, i) for i, u in enumerate(uuids)])
        from engines.measure.probe import peak_bandwidth

        self.peak_bw, peak_source = peak_bandwidth(gpu_name)
        if self.peak_bw and self.tp > 1 and self.device.type == "cuda":
            self.peak_bw *= self.tp  # each GPU reads its shard: the group's bandwidth is the roofline
        self.flash_mask_ok = self.kernel != "FLASH_ATTENTION" or _flash_takes_mask(self.device)
        self.compile_mode = self.opts["compile"]
        if self.compile_mode != "off":
            import torch._dynamo as dynamo

            for key in ("recompile_limit", "cache_size_limit"):  # never fall back to eager after many cells
                if hasattr(dynamo.config, key):
                    setattr(dynamo.config, key, max(64, getattr(dynamo.config, key)))
        self._shapes: dict[tuple[int, int, int], dict[str, float]] = {}
        extra = {
            "torch_threads": torch.get_num_threads(),
            "weight_read_bytes": read,
            "kv_bytes_per_token": self.kv_per_token,
            "sliding_window": self.window,
            "attn_implementation": impl,
            "sdpa_kernel": self.kernel,
            "quant": self.quant,
            "options": self.opts,
            "peak_bw": self.peak_bw,
            "peak_bw_source": peak_source,
            "gpu_name": gpu_name,
        }
        if presets.is_ref(model_dir):
            extra["random_weights_seed"] = hf_build.WEIGHTS_SEED
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            extra["gpu_allocated_after_load"] = torch.cuda.memory_allocated(self.device)
        return LoadInfo(
            load_s=time.perf_counter() - t0,
            device=str(self.device),
            dtype=precision if self.quant is None else f"{self.quant}/{precision}",
            weight_bytes=total,
            versions=self._versions(),
            extra=extra,
        )

    def _build(self, model_dir: str, impl: str):
        overrides_for = hf_build.config_overrides
        preset_name = presets.parse_ref(model_dir)
        try:
            if self.tp > 1:
                if preset_name:
                    preset = presets.load(preset_name)
                    return hf_build.tp_random_model(preset, self.device, self.dtype, impl, self.tp,
                                                    overrides_for(preset.config, self.opts))  # fmt: skip
                if self.opts.get("layers") is not None:
                    raise ValueError("option layers applies to random presets (NAME:random) only")
                overrides = overrides_for(hf_build._read_config(model_dir), self.opts)
                return hf_build.tp_checkpoint_model(model_dir, self.dtype, impl, self.tp, overrides)
            if preset_name:
                if self.quant == "gptq":
                    raise ValueError("random presets have no GPTQ weights; use --quant int8, nf4 or fp4")
                preset = presets.load(preset_name)
                return hf_build.random_model(preset, self.device, self.dtype, impl, self.quant, self.opts["double_quant"],
                                             overrides_for(preset.config, self.opts))  # fmt: skip
            if self.opts.get("layers") is not None:
                raise ValueError("option layers applies to random presets (NAME:random) only")
            overrides = overrides_for(hf_build._read_config(model_dir), self.opts)
            return hf_build.checkpoint_model(model_dir, self.device, self.dtype, impl, self.quant,
                                             self.opts["double_quant"], overrides)  # fmt: skip
        except ValueError as exc:
            raise SpecError(str(exc)) from None

    def _versions(self) -> dict[str, str]:
        v = {"torch": torch.__version__, "transformers": version("transformers")}
        if self.quant in ("int8", "nf4", "fp4"):
            v["bitsandbytes"] = version("bitsandbytes")
        if torch.cuda.is_available() and self.device.type == "cuda":
            v["cuda"] = str(torch.version.cuda)
        return v

    # --- generating -------------------------------------------------------------------

    def _kernel_context(self):
        if self.kernel is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, self.kernel))

    def _check_shape(self, length: int, n: int) -> None:
        if self.kernel == "FLASH_ATTENTION" and not self.flash_mask_ok and self.window and length + n - 1 >= self.window:
            raise RuntimeError(
                f"sdpa-flash: PyTorch's flash kernel cannot apply this model's {self.window}-token sliding window "
                f"(context {length + n}); use --attention sdpa or sdpa-efficient, or --opt sliding_window=none"
            )

    def _generate_kwargs(self, n: int, clock: StepClock) -> dict[str, Any]:
        # min = max new tokens: EOS cannot end a sequence early, so every engine makes the same work.
        kw: dict[str, Any] = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=self.pad_id,
                                  stopping_criteria=StoppingCriteriaList([clock]))  # fmt: skip
        if self.opts["cache"] == "static":
            kw["cache_implementation"] = "static"
            if self.compile_mode == "off":
                kw["disable_compile"] = True  # transformers would otherwise compile a static cache on its own
            else:
                from transformers import CompileConfig

                cc = CompileConfig(mode=self.compile_mode, fullgraph=False, dynamic=False)
                if self.device.type != "cuda":
                    cc._compile_all_devices = True  # transformers compiles on GPUs only unless told
                kw["compile_config"] = cc
        return kw

    def _run(self, ids: torch.Tensor, n: int) -> tuple[list[list[int]], float | None, list[float] | None]:
        clock = StepClock(sync_first=self.device.type == "cuda")
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **self._generate_kwargs(n, clock))
        tokens = out[:, ids.shape[1] :].tolist()  # .tolist() synchronises the device
        return tokens, *_clock_times(t0, clock)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        lengths = {len(p) for p in prompts}
        if len(lengths) != 1:
            raise ValueError(f"{self.name} expects prompts of one length (the workloads make them so)")
        ids = torch.tensor(prompts, device=self.device)
        return self._measured(len(prompts), len(prompts[0]), max_new_tokens, lambda: self._run(ids, max_new_tokens))

    def _measured(self, batch: int, length: int, n: int, run, kv_shared: int = 0) -> GenerateResult:
        """Run one minibatch and add energy, throttling, roofline and compile figures to its extra.

        `kv_shared`: leading tokens whose KV a decode step reads once for the whole batch (roofline).
        """
        self._check_shape(length, n)
        shape = (batch, length, n)
        if self.compile_mode != "off" and shape not in self._shapes and self._shapes:
            torch._dynamo.reset()  # one compiled shape at a time: old graphs and their memory go
            self._shapes.clear()
        before = self.meter.read() if self.meter else None
        t0 = time.perf_counter()
        with self._kernel_context():
            tokens, ttft, steps = run()
        wall = time.perf_counter() - t0
        extra = gpu_meter.delta(before, self.meter.read() if self.meter else None)
        extra.update(roofline.decode_roofline(weight_read_bytes=self.weight_read_bytes, kv_per_token=self.kv_per_token,
                                              batch=batch, input_len=length, output_len=n, window=self.window,
                                              latency_s=wall, ttft_s=ttft, peak_bw=self.peak_bw,
                                              shared=kv_shared))  # fmt: skip
        if self.compile_mode != "off":
            extra.update(self._compile_figures(shape, wall))
        return GenerateResult(tokens=tokens, ttft_s=ttft, step_times_s=steps, extra=extra)

    def _compile_figures(self, shape: tuple[int, int, int], wall: float) -> dict[str, float]:
        """compile_s of a shape: its first generate (which compiled) minus its fastest later one."""
        seen = self._shapes.setdefault(shape, {})
        if "first_call_s" not in seen:
            seen["first_call_s"] = wall
            return {"first_call_s": wall, "compiled_in_call": 1.0}
        seen["steady_call_s"] = min(wall, seen.get("steady_call_s", wall))
        seen["compile_s"] = max(0.0, seen["first_call_s"] - seen["steady_call_s"])
        return dict(seen)

    def logprobs(self, window: list[int], context_len: int) -> list[float]:
        from engines.quality.perplexity import HFLogprobs

        return HFLogprobs(self.model, None, self.device)(window, context_len)

    def sample(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        if temperature == 0:
            return self.generate(prompts, max_new_tokens).tokens
        ids = torch.tensor(prompts, device=self.device)
        torch.manual_seed(seed)
        with torch.inference_mode(), self._kernel_context():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=True, temperature=temperature, top_p=0.95, pad_token_id=self.pad_id)  # fmt: skip
        return out[:, ids.shape[1] :].tolist()

    # --- memory -----------------------------------------------------------------------

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
        tok_dir = model_dir
        if presets.is_ref(model_dir):  # random presets speak through tiny's tokenizer
            from engines.models.tiny import ensure_tiny

            tok_dir = str(ensure_tiny())
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
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
        length = len(prompts[0])
        return self._measured(len(prompts), length, max_new_tokens, lambda: self._pipe(texts, length, max_new_tokens))

    def _pipe(self, texts: list[str], prompt_len: int, n: int):
        clock = StepClock(sync_first=self.device.type == "cuda")
        t0 = time.perf_counter()
        with torch.inference_mode():
            outputs = self.pipe(texts, batch_size=len(texts), return_full_text=False, **self._generate_kwargs(n, clock))
        assert len(outputs) == len(texts) and clock.last_ids is not None
        # Token counts come from the ids the model produced: re-encoding the text could merge differently.
        full = clock.last_ids
        seen = full.shape[1] - n
        if seen != prompt_len:
            raise RuntimeError(f"the pipeline saw {seen} prompt tokens, the workload gave {prompt_len}")
        return full[:, seen:].tolist(), *_clock_times(t0, clock)


class TorchCompile(HFGenerate):
    """torch.compile of the HF model with a static KV cache, decoded by codebench's loop (no HF generate)."""

    name = "torch-compile"

    def load(self, model_dir: str, device: str) -> LoadInfo:
        from engines.adapters.hf.decode import StaticDecoder

        info = super().load(model_dir, device)
        self.decoder = StaticDecoder(self.model, self.compile_mode, self.device)
        info.extra["decode_loop"] = "codebench static"
        return info

    def _run(self, ids: torch.Tensor, n: int):
        with torch.inference_mode():
            out, ttft, steps = self.decoder.generate(ids, n)
            tokens = out.tolist()
        return tokens, ttft, steps


def _clock_times(t0: float, clock: StepClock) -> tuple[float | None, list[float] | None]:
    times = clock.times
    steps = [b - a for a, b in zip(times, times[1:])]
    return (times[0] - t0 if times else None), (steps or None)
