"""llama.cpp through llama-cpp-python's low-level API, with real batching.

A batch of B prompts is B sequences in one llama_batch per step (one seq_id each, logits only
for each sequence's last token, greedy argmax), not B calls. One clock for every figure: TTFT and
decode time are wall-clock (perf_counter) from the start of generate(), the clock of the runner's
latency, so decode tokens/s = B x (N - 1) / (latency - TTFT) mixes nothing. llama.cpp's own perf
counters, read at the phase boundary, are kept in `extra` (perf_*) as information.

n_threads defaults to llama.cpp's own default, common_cpu_get_num_math() (llama-bench's -t; see
engines/llama_tools.default_threads): physical cores of the whole machine, performance cores only on
hybrid CPUs. On the 2-core dev VM (2 cores, no SMT) that is 2, as was the previous default (physical
cores within the affinity mask); the two differ where an affinity mask is narrower than the machine
(llama.cpp does not look at it) and on hybrid CPUs.

Options (run.options): n_threads (default: llama.cpp's, above), n_threads_batch, n_batch, n_ubatch,
n_gpu_layers (CUDA/Metal builds only; all layers on --device cuda), flash_attn (on/off/auto),
type_k/type_v (KV-cache type, default f16 like llama.cpp), kv_unified, threadpool (attached, the default: one
persistent CPU threadpool per context as llama.cpp's own tools attach; per-graph: llama-cpp-python's default,
a disposable pool per decode step), decode_loop (auto, the default: the decode phase in one C call, steploop.py,
where a C compiler can build it, else the Python loop; c: the C loop or a SpecError; python: the Python loop),
n_ctx (total positions;
default: grown to fit each cell, n_seq x per-sequence length, during warm-up), repack (on/off/auto:
llama.cpp's weight repacking into extra buffer types such as AMX; auto = off on CPUs with AMX,
whose quantized kernels crash llama.cpp 0.3.36's build on tiny, else on).
"""

from __future__ import annotations

import ctypes
import time
from itertools import accumulate
from pathlib import Path
from typing import Any

from engines.adapters.llamacpp import gguf as gguf_convert
from engines.adapters.llamacpp import steploop
from engines.adapters.llamacpp.bindings import __version__ as llama_cpp_version
from engines.adapters.llamacpp.bindings import ll
from engines.adapters.llamacpp.options import FLASH, KV_TYPES, check_options
from engines.adapters.llamacpp.threadpool import Threadpools
from engines.adapters.llamacpp.tools import default_threads
from engines.base import Engine, GenerateResult, LoadInfo, OutOfMemory, SpecError

# KV-cache types by ggml type number (gguf's enum mirrors ggml's; llama_cpp lacks some names, e.g. BF16).
_KV_TYPES = {n: int(gguf_convert.constants().GGMLQuantizationType[n.upper()]) for n in KV_TYPES}
_SPLIT = {"layer": ll.LLAMA_SPLIT_MODE_LAYER, "row": ll.LLAMA_SPLIT_MODE_ROW}  # --tp N: how N GPUs share the model
_CTX_MIN = 256  # per-sequence context the first cell gets before it grows

_backend_ready = False
# A second handle on llama_get_logits that returns the address as an int (llama-cpp-python's returns a new
# POINTER object per call): the per-step check that the logits buffer has not moved costs one cheap call.
_logits_addr = ll._lib["llama_get_logits"]
_logits_addr.argtypes, _logits_addr.restype = [ctypes.c_void_p], ctypes.c_void_p


def _numpy():
    """numpy, for the Python decode loop and logprobs only: the C path keeps it out of the process (bindings.py)."""
    import numpy

    return numpy


def _view(pointer: Any, ctype: Any, n: int) -> Any:
    """A ctypes array over n items at a llama_batch field's pointer."""
    return (ctype * n).from_address(ctypes.cast(pointer, ctypes.c_void_p).value)


def _round_up(n: int, to: int = 256) -> int:
    return max(to, -(-n // to) * to)


def parse_options(options: dict[str, Any], device: str) -> dict[str, Any]:
    """Validate the run's options (options.check_options) and fill in the defaults; SpecError names the fix."""
    check_options(options, device)
    o = dict(options)
    on_gpu = device.startswith("cuda")
    if on_gpu and not ll.llama_supports_gpu_offload():
        raise SpecError(
            "this llama-cpp-python build has no GPU backend; rebuild it with "
            'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
        )
    o.setdefault("n_gpu_layers", 999 if on_gpu else 0)
    o["flash_attn"] = FLASH[o.get("flash_attn", "auto")]
    o.setdefault("type_k", "f16")
    o.setdefault("type_v", "f16")
    o.setdefault("split_mode", "row")  # row: each weight matrix split across GPUs (tensor parallel)
    o.setdefault("n_threads", default_threads())
    o.setdefault("n_threads_batch", o["n_threads"])
    o.setdefault("kv_unified", False)  # independent prompts: per-sequence KV streams decode faster
    o["repack"] = {True: "on", False: "off"}.get(o.get("repack", "auto"), o.get("repack", "auto"))
    o.setdefault("threadpool", "attached")
    o.setdefault("decode_loop", "auto")
    return o


def resolve_decode_loop(choice: str = "auto") -> tuple[Any, str]:
    """(the C loop or None, why not): decode_loop=c refuses where the C loop cannot be built."""
    if choice == "python":
        return None, ""
    fn, why = steploop.load()
    if fn is None and choice == "c":
        raise SpecError(f"llama.cpp decode_loop=c is not available here: {why}; use decode_loop=auto or python")
    return fn, why


def _cpu_has_amx() -> bool:
    return "AMX_INT8 = 1" in ll.llama_print_system_info().decode(errors="replace")


def resolve_repack(repack: str = "auto") -> str:
    """on/off for llama.cpp's extra buffer types. auto is off on AMX CPUs: llama.cpp's AMX buffers
    segfault on the first decode of a quantized tiny (llama-cpp-python 0.3.36)."""
    return ("off" if _cpu_has_amx() else "on") if repack == "auto" else repack


def model_params(repack: str = "auto") -> Any:
    """llama.cpp's default model parameters with the repack choice applied (tests and benchmarks use it too)."""
    mparams = ll.llama_model_default_params()
    mparams.use_extra_bufts = resolve_repack(repack) == "on"
    return mparams


def _check_call(prompts: list[list[int]], max_new_tokens: int) -> None:
    if max_new_tokens < 1 or not prompts or not all(prompts):
        raise ValueError("llama.cpp generate needs at least one non-empty prompt and max_new_tokens >= 1")


class LlamaCpp(Engine):
    name = "llama.cpp"
    keeps_numpy_out = True  # the worker draws prompts in a child process (engines/harness/prompt_process.py)

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.model = None
        self.ctx = None
        self.batch = None
        self.batch_cap = 0
        self.n_seq = 0  # sequences the context holds
        self.n_ctx = 0  # positions, shared by the sequences
        self.opts: dict[str, Any] = {}
        self.gguf_path = ""
        self._pools: Threadpools | None = None
        self._cloop: Any = None  # the C decode loop (steploop.py), or None for the Python loop
        self._cargmax: Any = None  # its greedy pick, used with it

    # --- load ---------------------------------------------------------------------------

    def load(self, model_dir: str, device: str) -> LoadInfo:
        global _backend_ready
        t0 = time.perf_counter()
        self.opts = parse_options(self.config.get("options") or {}, device)
        src = Path(model_dir)
        if src.is_file():  # a user's .gguf, used as is
            meta = gguf_convert.inspect_gguf(src)
            path, quant = src, _file_type_name(meta.get("file_type"))
        else:
            quant = gguf_convert.check_quant(self.config.get("quant"))
            path = gguf_convert.convert_isolated(src, quant, n_threads=self.opts["n_threads"])
            meta = gguf_convert.inspect_gguf(path)
        convert_s = time.perf_counter() - t0
        if meta["architecture"] is None:
            raise SpecError(f"{path} has no general.architecture; it is not a model GGUF")
        if not _backend_ready:
            ll.llama_backend_init()
            _backend_ready = True
        self.opts["repack"] = resolve_repack(self.opts["repack"])
        self._cloop, loop_why = resolve_decode_loop(self.opts["decode_loop"])
        self._cargmax = steploop.argmax() if self._cloop is not None else None
        mparams = model_params(self.opts["repack"])
        mparams.n_gpu_layers = self.opts["n_gpu_layers"]
        first = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        tp = int(self.config.get("tp") or 1)
        if device.startswith("cuda:"):
            mparams.main_gpu = first
        if tp > 1:  # --tp N: GPUs first..first+N-1 take equal shares, the others none
            if not device.startswith("cuda"):
                raise SpecError("llama.cpp --tp splits a model across GPUs; use --device cuda, or --tp 1")
            self._split = (ctypes.c_float * ll.LLAMA_MAX_DEVICES)(*[1.0 if first <= i < first + tp else 0.0
                                                                    for i in range(ll.LLAMA_MAX_DEVICES)])  # fmt: skip
            mparams.split_mode = _SPLIT[self.opts["split_mode"]]
            mparams.tensor_split = self._split  # kept on self: llama.cpp reads it while loading
        self.model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            arch = meta["architecture"]
            raise RuntimeError(f"llama.cpp could not load {path} (architecture {arch}); see the worker log")
        self.gguf_path = str(path)
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self._make_context(1, self.opts.get("n_ctx") or _CTX_MIN)
        on_gpu = self.opts["n_gpu_layers"] > 0
        return LoadInfo(
            load_s=time.perf_counter() - t0,
            device=(",".join(f"cuda:{first + i}" for i in range(tp)) if tp > 1
                    else (device if ":" in device else "cuda:0")) if on_gpu else "cpu",
            dtype=quant,
            weight_bytes=int(ll.llama_model_size(self.model)),
            versions={"llama_cpp_python": llama_cpp_version},
            extra={
                "gguf": self.gguf_path,
                "gguf_bytes": meta["bytes"],
                "convert_s": round(convert_s, 3),
                "n_threads": self.opts["n_threads"],
                "threadpool": "attached" if self._pools is not None and self._pools.attached else "per-graph",
                "decode_loop": "c" if self._cloop else "python",
                **({"decode_loop_why": loop_why} if loop_why else {}),  # why auto kept the Python loop
                "n_gpu_layers": self.opts["n_gpu_layers"],
                **({"tp": {"size": tp, "split_mode": self.opts["split_mode"]}} if tp > 1 else {}),
                "flash_attn": {-1: "auto", 0: "off", 1: "on"}[self.opts["flash_attn"]],
                "kv_cache": f"{self.opts['type_k']}/{self.opts['type_v']}",
                "repack": self.opts["repack"],
                "system_info": ll.llama_print_system_info().decode(errors="replace").strip(),
            },
        )

    def _make_context(self, n_seq: int, n_ctx: int) -> None:
        """(Re)create the context: n_seq sequences sharing n_ctx positions (n_ctx / n_seq each unless kv_unified)."""
        self._free_context()
        o = self.opts
        p = ll.llama_context_default_params()
        p.n_seq_max = n_seq
        p.n_ctx = n_ctx
        p.n_batch = o.get("n_batch", 2048)  # llama.cpp's default; it clamps this to n_ctx
        p.n_ubatch = min(o.get("n_ubatch", 512), p.n_batch)
        p.n_threads = o["n_threads"]
        p.n_threads_batch = o["n_threads_batch"]
        p.flash_attn_type = o["flash_attn"]
        p.type_k = _KV_TYPES[o["type_k"]]
        p.type_v = _KV_TYPES[o["type_v"]]
        p.kv_unified = o["kv_unified"]
        p.no_perf = False  # the perf counters are the timing source
        self.ctx = ll.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise OutOfMemory(f"llama.cpp could not create a context of {n_ctx} positions for {n_seq} sequences")
        if o["threadpool"] == "attached":  # as llama.cpp's own tools do (engines/adapters/llamacpp/threadpool.py)
            self._pools = Threadpools(self.ctx, o["n_threads"], o["n_threads_batch"])
        # llama.cpp may clamp n_ctx and n_batch (n_batch <= n_ctx): read back what it uses
        self.n_seq, self.n_ctx, self.n_batch = n_seq, ll.llama_n_ctx(self.ctx), ll.llama_n_batch(self.ctx)
        self.batch_cap = max(self.n_batch, n_seq)
        self.batch = ll.llama_batch_init(self.batch_cap, 0, 1)
        cap = self.batch_cap
        self._tok, self._pos = _view(self.batch.token, ctypes.c_int32, cap), _view(self.batch.pos, ctypes.c_int32, cap)
        self._lgt = _view(self.batch.logits, ctypes.c_int8, cap)
        _view(self.batch.n_seq_id, ctypes.c_int32, cap)[:] = [1] * cap
        self._seq_of = [-1] * cap  # what batch.seq_id[i][0] holds, to skip rewrites
        self._lv, self._lv_key = None, None  # numpy view of the logits buffer and its (address, rows)

    def _room(self, n_seq: int, n_ctx: int, lens: list[int]) -> bool:
        if self.opts["kv_unified"]:
            return sum(lens) <= n_ctx
        return max(lens) <= n_ctx // n_seq

    def _ensure_capacity(self, lens: list[int]) -> None:
        """Fit the context to a cell: grow it (warm-up pays), or fail clearly with a fixed n_ctx."""
        n_seq = max(len(lens), self.n_seq)
        fixed = self.opts.get("n_ctx")
        if fixed:
            if not self._room(n_seq, fixed, lens):
                raise SpecError(
                    f"a cell needs {max(lens)} positions for each of {len(lens)} sequences but n_ctx={fixed}; "
                    f"raise n_ctx to at least {len(lens) * max(lens)}"
                )
            if n_seq > self.n_seq:
                self._make_context(n_seq, fixed)
        elif n_seq > self.n_seq or not self._room(self.n_seq, self.n_ctx, lens):
            self._make_context(n_seq, n_seq * _round_up(max(max(lens), self.n_ctx // self.n_seq)))

    # --- generate -------------------------------------------------------------------------

    def _fill(self, start: int, tokens: Any, pos: Any, seqs: Any, logits: Any) -> None:
        """Batch rows start.. from sequences of ints (lists, ranges or numpy arrays)."""
        n = len(tokens)
        self._tok[start : start + n] = tokens
        self._pos[start : start + n] = pos
        self._lgt[start : start + n] = logits
        seq_id, seq_of = self.batch.seq_id, self._seq_of
        for i, s in enumerate(seqs, start):
            if seq_of[i] != s:
                seq_id[i][0] = s
                seq_of[i] = s

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = ll.llama_decode(self.ctx, self.batch)
        if rc != 0:
            _decode_failed(rc)

    def _logits(self, rows: int) -> Any:
        """The n_out requested rows of llama.cpp's logits, in batch order, as a numpy view kept while the
        buffer's address and the row count stay the same (llama.cpp reallocates it only to grow)."""
        key = (_logits_addr(self.ctx), rows)  # llama_get_logits also waits for the backend, as it must
        if key != self._lv_key:
            np = _numpy()
            buf = (ctypes.c_float * (rows * self.n_vocab)).from_address(key[0])
            self._lv, self._lv_key = np.frombuffer(buf, dtype=np.float32).reshape(rows, self.n_vocab), key
        return self._lv

    def _argmax(self, n_out: int) -> list[int]:
        """Each requested row's greedy token: in C beside the C loop (numpy's semantics, no numpy), else numpy."""
        if self._cargmax is None:
            return self._logits(n_out).argmax(axis=1).tolist()
        base, row = _logits_addr(self.ctx), 4 * self.n_vocab
        return [self._cargmax(base + i * row, self.n_vocab) for i in range(n_out)]

    def _prefill(self, prompts: list[list[int]]) -> list[int]:
        """All prompts (sequence i in seq id i) packed into n_batch-sized llama_batches; each one's next token."""
        lens = [len(p) for p in prompts]
        flat = [t for p in prompts for t in p]
        pos = [i for n in lens for i in range(n)]
        seqs = [s for s, n in enumerate(lens) for _ in range(n)]
        want = [0] * len(flat)
        for end in accumulate(lens):
            want[end - 1] = 1
        nxt: list[int] = []
        for start in range(0, len(flat), self.n_batch):
            stop = min(start + self.n_batch, len(flat))
            self._fill(0, flat[start:stop], pos[start:stop], seqs[start:stop], want[start:stop])
            self._decode(stop - start)
            n_out = sum(want[start:stop])
            if n_out:
                nxt += self._argmax(n_out)
        return nxt

    def _decode_steps(self, first: list[int], lens: list[int], n: int, t_first: float) -> tuple[list[list[int]], list[float]]:
        """Greedy decoding, one token per sequence per llama_decode, from each sequence's first token (from the
        prefill, which ended at t_first) to n tokens. Returns each sequence's tokens, and t_first and the clock at
        the end of each step.

        The C loop (steploop.c) runs the steps in one call; the Python loop below leaves the same tokens,
        positions and clock readings."""
        b = len(first)
        self._fill(0, first, lens, range(b), [1] * b)
        self.batch.n_tokens = b
        if self._cloop is not None:
            return self._c_steps(first, n, t_first)
        return self._python_steps(first, lens, n, t_first)

    def _c_steps(self, first: list[int], n: int, t_first: float) -> tuple[list[list[int]], list[float]]:
        b = len(first)
        out, ends = (ctypes.c_int64 * (n * b))(), (ctypes.c_double * n)()  # out is step-major: a step is b tokens
        out[:b], ends[0] = first, t_first
        done = ctypes.c_int32(0)
        rc = self._cloop(steploop.DECODE, steploop.GET_LOGITS, self.ctx, ctypes.addressof(self.batch), self.n_vocab,
                         n, ctypes.addressof(out), ctypes.addressof(ends), ctypes.byref(done))  # fmt: skip
        if rc != 0:
            _decode_failed(rc)
        return [out[s::b] for s in range(b)], ends[:]

    def _python_steps(self, first: list[int], lens: list[int], n: int, t_first: float) -> tuple[list[list[int]], list[float]]:
        """The loop only writes into buffers that exist before it: the batch's token and position arrays, and out's
        row (argmax's `out=`). Greedy selection is numpy's argmax over the kept logits view: 1.1 us a step at batch
        1 on tiny's 4096-token vocabulary (2.0 at batch 4), against 7.2 (28) for llama.cpp's greedy sampler, whose
        llama_sampler_sample copies each row into a candidate array first. Both pick the first maximum.
        benchmarks/llamacpp_vs_llama_bench.py --steps measures them."""
        np = _numpy()
        b = len(first)
        out = np.empty((n, b), dtype=np.int64)  # step-major: a step's tokens are one row
        out[0] = first
        # Positions after step s are row s - 1: a copy per step, cheaper than an in-place `pos += 1` (a ufunc
        # call, 1.5% of a batch-1 Q4_0 step on tiny with its cache side effects).
        next_pos = np.asarray(lens, dtype=np.int32) + np.arange(1, n, dtype=np.int32)[:, None]
        tok, pos = np.frombuffer(self._tok, dtype=np.int32)[:b], np.frombuffer(self._pos, dtype=np.int32)[:b]
        decode, ctx, batch, logits, clock = ll.llama_decode, self.ctx, self.batch, self._logits, time.perf_counter
        ends = [t_first] * n
        for step in range(1, n):
            rc = decode(ctx, batch)
            if rc != 0:
                _decode_failed(rc)
            row = out[step]
            logits(b).argmax(axis=1, out=row)
            tok[:] = row
            pos[:] = next_pos[step - 1]
            ends[step] = clock()
        return out.T.tolist(), ends

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        t0 = time.perf_counter()  # TTFT and decode time share this clock with the runner's latency
        _check_call(prompts, max_new_tokens)
        b = len(prompts)
        lens = [len(p) for p in prompts]
        self._ensure_capacity([n + max_new_tokens for n in lens])
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        ll.llama_perf_context_reset(self.ctx)
        first = self._prefill(prompts)
        t_first = time.perf_counter()
        perf_prefill = ll.llama_perf_context(self.ctx)
        tokens, ends = self._decode_steps(first, lens, max_new_tokens, t_first)
        perf = ll.llama_perf_context(self.ctx)
        ttft, wall = t_first - t0, ends[-1] - t0
        decode_s = wall - ttft
        pre_ms = perf_prefill.t_p_eval_ms + perf_prefill.t_eval_ms
        dec_ms = perf.t_p_eval_ms + perf.t_eval_ms - pre_ms
        return GenerateResult(
            tokens=tokens,
            ttft_s=ttft,
            step_times_s=[t1 - t0_ for t0_, t1 in zip(ends, ends[1:])],
            extra={
                "prefill_s": ttft,
                "decode_s": decode_s,
                "decode_tokens_per_s": b * (max_new_tokens - 1) / decode_s if max_new_tokens > 1 else None,
                "wall_s": wall,
                # llama.cpp's own timers (compute inside llama_decode only); a batched decode step counts as
                # "prompt" there, so they are read at the phase boundary.
                "perf_prefill_s": pre_ms / 1e3,
                "perf_decode_s": dec_ms / 1e3,
                "perf_decode_tokens_per_s": b * (max_new_tokens - 1) / (dec_ms / 1e3) if dec_ms > 0 else None,
                "perf_prefill_tokens_per_s": sum(lens) / (pre_ms / 1e3) if pre_ms > 0 else None,
                # llama.cpp's compute time over the wall clock: near 1 means little time outside llama_decode.
                "perf_over_wall": (pre_ms + dec_ms) / 1e3 / wall if wall > 0 else None,
                # llama.cpp's token counts (each floored at 1); a batched decode step counts as "prompt".
                "perf_n_p_eval": perf.n_p_eval,
                "perf_n_eval": perf.n_eval,
                "n_seq_ctx": self.n_seq,
                "n_ctx": self.n_ctx,
            },
        )

    def logprobs(self, window: list[int], context_len: int) -> list[float]:
        """ln p(window[i] | window[:i]) for i >= context_len: perplexity of a GGUF quant level."""
        if not 1 <= context_len < len(window):
            raise ValueError(f"context_len must be in [1, {len(window) - 1}], got {context_len}")
        self._ensure_capacity([len(window)])
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        np = _numpy()
        ids = np.asarray(window[:-1], dtype=np.int32)
        want = (np.arange(len(ids)) >= context_len - 1).astype(np.int8)
        rows = []
        for start in range(0, len(ids), self.n_batch):
            stop = min(start + self.n_batch, len(ids))
            self._fill(0, ids[start:stop], np.arange(start, stop, dtype=np.int32), [0] * (stop - start),
                       want[start:stop])  # fmt: skip
            self._decode(stop - start)
            n_out = int(want[start:stop].sum())
            if n_out:
                rows.append(self._logits(n_out).astype(np.float64))
        logits = np.concatenate(rows)
        top = logits.max(axis=1, keepdims=True)
        logz = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        targets = np.asarray(window[context_len:])
        return (logits[np.arange(len(targets)), targets] - logz).tolist()

    # --- unload ---------------------------------------------------------------------------

    def _free_context(self) -> None:
        self._lv, self._lv_key = None, None
        if self._pools is not None:  # detached while the context still exists
            self._pools.close()
            self._pools = None
        if self.batch is not None:
            ll.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None

    def unload(self) -> None:
        self._free_context()
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None


def _decode_failed(rc: int) -> None:
    why = "no KV slot" if rc == 1 else "see the worker log"
    raise RuntimeError(f"llama_decode failed with code {rc} ({why})")


def _file_type_name(code: Any) -> str:
    try:
        name = gguf_convert.constants().LlamaFileType(int(code[0] if isinstance(code, (list, tuple)) else code)).name
        return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
    except (TypeError, ValueError):
        return "unknown"
