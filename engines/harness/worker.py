"""Worker process: loads one engine and model once, then runs cells on command.

Protocol: JSON commands on stdin (load, cell, tokens, exit), events as JSON lines on the
original stdout. Anything a library prints goes to stderr, which the parent keeps a tail of.
Run as `python -m engines.harness.worker`; it exits when its parent goes away. Under torchrun (tensor
parallelism, engines/harness/tp.py) rank 0 speaks this protocol and relays each command to the other ranks.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from typing import Any, Iterator, TextIO

from engines.base import Engine
from engines.harness import tp
from engines.harness.prompt_process import PromptProcess
from engines.measure.contention import HostMeter, gpu_indices
from engines.measure.hardware import speed_env
from engines.measure.roofline import cell_efficiency
from engines.quality.workload_scores import score_cell
from engines.study import commands as cmds
from engines.study import events as ev
from engines.study.schema import EngineRun
from engines.study.speculation import cell_metrics, tokens_digest
from store.serving import serving_metrics

# Test hook: "kill:N" or "segv:N" dies in cell N; "kill:N@TEXT" only in runs whose label holds TEXT;
# "oomload@TEXT" fails the load of such runs as out of memory.
_FAULT = os.environ.get("CODEBENCH_FAULT", "")


def _watch_parent(parent: int, grandparent: int | None = None) -> None:
    # Under torchrun the parent is its agent: the study (grandparent) dying ends every rank too.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent or (grandparent and tp.parent_of(parent) != grandparent):
            os._exit(3)


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 to clear_refs resets VmHWM, the peak resident set size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _vms() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def one_line(exc: BaseException, limit: int = 500) -> str:
    """`Type: message`, first line only: what a stored error says."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _maybe_fault(index: int, label: str = "") -> None:
    if not _FAULT:
        return
    what, _, at = _FAULT.partition(":")
    at, _, only = at.partition("@")
    if at.isdigit() and int(at) == index and only in label:
        if what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif what == "segv":
            ctypes.string_at(0)


class Worker:
    def __init__(self, out: TextIO, group: tp.Group | None = None):
        self.out = out
        self._emit_lock = threading.Lock()
        self.group = group  # tensor-parallel ranks: every rank runs the same calls, rank 0 reports
        self.run_id = ""
        self.engine: Engine | None = None
        self.model_path = ""
        self.tokenizer_file: str | None = None
        self.label = ""
        self.meter: HostMeter | None = None
        self.side: PromptProcess | None = None  # prompts and scores for engines that keep numpy out of this process
        self.keeps_numpy_out = False
        self._open_ended = False  # a serving cell with a duration: each pass sends as many requests as fit

    def emit(self, event: ev.Event) -> None:
        line = ev.encode(event) + "\n"
        with self._emit_lock:  # a server engine reports its requests from a thread of its own
            self.out.write(line)
            self.out.flush()

    def log(self, message: str, level: str = "info") -> None:
        self.emit(ev.Log(self.run_id, time.time(), level=level, message=message))

    # --- commands ---------------------------------------------------------------------

    def load(self, cmd: cmds.Load) -> None:
        from engines.models.refs import materialize, tokenizer_file
        from engines.registry import load_engine

        self.run_id = cmd.run_id
        run = EngineRun.model_validate(cmd.run)
        self.label = run.label()
        if _FAULT.startswith("oomload@") and _FAULT.partition("@")[2] in self.label:
            raise MemoryError("fault injection: out of memory while loading")
        t0 = time.perf_counter()
        self.model_path = materialize(cmd.model)
        tok = tokenizer_file(self.model_path)
        if tok is None:  # a bare .gguf or a URL: prompts come from tiny's tokenizer
            from engines.models.tiny import ensure_tiny

            tok = tokenizer_file(str(ensure_tiny()))
        self.tokenizer_file = str(tok)
        self.engine = load_engine(run)
        self.keeps_numpy_out = bool(getattr(self.engine, "keeps_numpy_out", False))
        if self.keeps_numpy_out and "numpy" not in sys.modules:
            self.side = PromptProcess()
            self.side.start()  # before RLIMIT_AS below: a child inherits the cap
        if self.group is None:
            info = self.engine.load(self.model_path, cmd.device)
        else:
            info, failed = None, None
            try:
                info = self.engine.load(self.model_path, self.group.device)
            except Exception as exc:  # every rank hears of it, so none waits in a collective for this one
                failed = exc
            self.group.agree(f"{type(failed).__name__}: {failed}" if failed else None)
            if failed is not None:
                raise failed
            assert info is not None
            info.device = self.group.devices_label
            info.extra["tp"] = {"size": self.group.size, "backend": self.group.backend, "init_s": self.group.init_s}
        info.load_s = info.load_s or (time.perf_counter() - t0)
        info.extra["env"] = speed_env()  # what this worker really ran with: the environment diff reads it
        if self.keeps_numpy_out:
            info.extra["numpy_in_worker"] = "numpy" in sys.modules
        if "torch" in sys.modules:
            info.extra.setdefault("torch_threads", sys.modules["torch"].get_num_threads())
        root = os.getppid() if self.group is not None else os.getpid()  # torchrun: every rank is ours
        server = info.extra.get("server_pid")
        self.meter = HostMeter(root, gpu_indices(cmd.device, run.tp), *([server] if isinstance(server, int) else []))
        limit = cmd.cell_mem_limit_bytes
        if limit:
            cap = _vms() + int(limit)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            info.extra["rlimit_as_bytes"] = cap
        self.emit(
            ev.Loaded(
                self.run_id, time.time(), load_s=info.load_s, device=info.device, dtype=info.dtype,
                weight_bytes=info.weight_bytes, versions=info.versions, extra=info.extra,
            )
        )  # fmt: skip

    def prompts(self, batch: int, length: int, seed: int, workload: dict | None = None,
                params: dict | None = None) -> list[list[int]]:  # fmt: skip
        assert self.tokenizer_file is not None
        if self.side is not None:
            return self.side.call("prompts", self.tokenizer_file, workload, batch, length, seed, params)
        from pathlib import Path

        from engines.models.prompt_sources import prompts_for

        return prompts_for(Path(self.tokenizer_file), workload, batch, length, seed, params)

    def _score(self, *args: Any) -> dict[str, Any]:
        """fim, needle: how right a cell's last answers are (engines/quality/workload_scores.py)."""
        if self.side is not None:
            return self.side.call("score", self.tokenizer_file, *args)
        return score_cell(self.tokenizer_file, *args)

    def _configure_load(self, cmd: cmds.RunCell) -> int:
        """How many prompts a cell sends: a serving cell sets its engine's load (concurrency = the batch axis).
        A duration pass starts with the requests it expects and asks for more when it outruns them."""
        self._open_ended = False
        if cmd.load is None:
            return cmd.batch
        from engines.study.load import arrival_seed, loaded_rate, prompt_pool

        assert self.engine is not None
        rate = loaded_rate(cmd.params.get("request_rate"))
        seed = arrival_seed((cmd.workload or {}).get("seed", 0), cmd.batch, cmd.input_len, rate)
        duration, requests = cmd.load.get("duration_s"), cmd.load.get("requests")
        more = None
        if duration:
            self._open_ended = True

            def more(first: int, count: int) -> list[list[int]]:  # distinct: a server's prefix cache would
                if requests:  # flatter repeated prompts
                    count = min(count, requests - first)
                seed = (cmd.seed + first * 1_000_003) % 2**32
                return self.prompts(count, cmd.input_len, seed, cmd.workload, cmd.params) if count > 0 else []
        self.engine.configure_load(cmd.batch, rate, float(cmd.load.get("burstiness") or 1.0), seed,
                                   duration_s=duration, max_requests=requests, more_prompts=more)  # fmt: skip
        return prompt_pool(cmd.batch, rate, requests, duration)

    def _minibatch(self, prompts: list[list[int]], out_len: int) -> tuple[float, Any]:
        assert self.engine is not None
        t0 = time.perf_counter()
        res = self.engine.generate(prompts, out_len)
        elapsed = time.perf_counter() - t0
        got = [len(t) for t in res.tokens]
        failed = {f["index"] for f in (res.extra or {}).get("failed", [])}  # openai: failed requests, reasons kept
        wrong_count = len(got) != len(prompts) and not self._open_ended  # a duration pass sends what fits
        if wrong_count or any(n != out_len for i, n in enumerate(got) if i not in failed):
            raise RuntimeError(f"engine generated {got} tokens per sequence, expected {out_len} each")
        return elapsed, res

    def cell(self, cmd: cmds.RunCell) -> None:
        """A whole cell, or (interleaved schedule) one slot of it: `slot` = {round, keep_peak, done, total}."""
        assert self.engine is not None
        index, batch, in_len, out_len = cmd.index, cmd.batch, cmd.input_len, cmd.output_len
        timing = cmd.timing
        slot = cmd.slot or {}
        if self.meter is not None:
            self.meter.peers = [p for p in slot.get("peers") or [] if isinstance(p, int)]
        self.emit(ev.CellStarted(self.run_id, time.time(), index=index, label=cmd.label))
        started = time.time()
        try:
            self.engine.before_cell()
            prompts = self.prompts(self._configure_load(cmd), in_len, cmd.seed, cmd.workload, cmd.params)
            if cmd.load is not None:  # Live's requests in flight, done and failed, and its TTFT/ITL strip
                self.engine.progress = lambda snap, i=index: self.emit(ev.Requests(self.run_id, time.time(), index=i,
                                                                                   **snap))  # fmt: skip
            if not slot.get("keep_peak"):  # later slots of a cell keep the peak of the earlier ones
                self.engine.reset_peak_memory()
                _reset_peak_rss()
            total = slot.get("total") or timing["warmup"] + timing["iters"] * timing["repeats"]
            done = slot.get("done", 0)
            for _ in range(timing["warmup"]):
                dt, _res = self._minibatch(prompts, out_len)
                done += 1
                self.emit(ev.Progress(self.run_id, time.time(), index=index, phase="warmup", done=done,
                                      total=total, tokens_per_s=sum(len(t) for t in _res.tokens) / dt))  # fmt: skip
            _maybe_fault(index, self.label)
            repeats = []
            extra: dict[str, Any] = {}
            extras, digests = [], []
            for r in range(timing["repeats"]):
                rep: dict[str, Any] = {"latencies_s": [], "ttft_s": [], "tokens": []}
                before = self.meter.snapshot() if self.meter else None
                rep["t0"] = time.time()
                for _ in range(timing["iters"]):
                    dt, res = self._minibatch(prompts, out_len)
                    rep["latencies_s"].append(dt)
                    rep["ttft_s"].append(res.ttft_s)
                    rep["tokens"].append(sum(len(t) for t in res.tokens))
                    if res.extra:
                        rep.setdefault("extra", []).append(res.extra)
                        extra = res.extra
                    extras.append(res.extra)
                    digests.append(tokens_digest(res.tokens))
                    done += 1
                    self.emit(ev.Progress(self.run_id, time.time(), index=index, phase="timed", done=done,
                                          total=total, tokens_per_s=rep["tokens"][-1] / dt))  # fmt: skip
                rep["t1"] = time.time()
                rep["round"] = slot.get("round", r)
                if self.meter and before:
                    rep["host"] = self.meter.between(before, self.meter.snapshot())
                repeats.append(rep)
            metrics: dict[str, Any] = {"last_extra": extra} if extra else {}
            # Greedy identity across runs is checked on digests; a digest that changes between
            # minibatches of one cell means the engine is not deterministic here.
            efficiency = cell_efficiency(repeats)  # J/token, decode bandwidth and roofline share, throttling
            if efficiency:
                metrics["efficiency"] = efficiency
            metrics.update(cell_metrics(extras, batch, out_len), tokens_sha256=digests[-1],
                           tokens_stable=len(set(digests)) == 1)  # fmt: skip
            if cmd.load is not None:  # serving: latency percentiles, SLO attainment and goodput over every request
                metrics["serving"] = serving_metrics(extras, cmd.load.get("slo"))
            # fim, needle: how right the last minibatch's answers are (engines/quality/workload_scores.py)
            metrics.update(self._score(cmd.workload, batch, in_len, cmd.seed, cmd.params, res.tokens))
            if self.keeps_numpy_out:  # llama.cpp: its speed depends on it (bindings.py)
                metrics["numpy_in_worker"] = "numpy" in sys.modules
            ranks = getattr(self.engine, "rank_peaks", None)  # engines that start their own ranks (vllm)
            if ranks is not None and (per_rank := ranks()):
                metrics["tp"] = per_rank
            rss = _peak_rss()
            if server_rss := extra.get("server_peak_rss_bytes"):  # a server's memory is the stack's, the client's
                metrics["client_peak_rss_bytes"], rss = rss, server_rss  # is not: kept apart
            result = {
                "repeats": repeats,
                "peak_rss_bytes": rss,
                "peak_gpu_bytes": self.engine.peak_memory_bytes(),
                "metrics": metrics,
                "started_at": started,
            }
            status, text = "done", ""
        except BaseException as exc:  # noqa: BLE001 - every failure of a cell is recorded, the worker lives on
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            oom = self.engine.is_oom(exc)
            self.engine.release_memory()
            text = one_line(exc)
            if not oom:  # the traceback (with this machine's paths) goes to the live log, not into the store
                self.log("".join(traceback.format_exception(exc)).rstrip(), level="error")
            # a server engine's server that died mid-cell: crashed (engines/adapters/serve/process.py)
            status = "oom" if oom else "crashed" if getattr(exc, "crashed", False) else "failed"
            result = {"started_at": started}
        if self.group is not None:  # per-rank peaks to rank 0, and one status for the cell
            peaks = (result.get("peak_gpu_bytes"), result.get("peak_rss_bytes") or _peak_rss())
            status, result, text = self.group.merge_cell(status, result, text, peaks)
        self.emit(ev.CellFinished(self.run_id, time.time(), index=index, status=status, error=text[:4000],
                                  result=result))  # fmt: skip

    def _tokenizer(self):
        from tokenizers import Tokenizer

        assert self.tokenizer_file is not None
        return Tokenizer.from_file(self.tokenizer_file)

    def _quality_error(self, metric: str, exc: Exception) -> None:
        self.emit(ev.QualityResult(self.run_id, time.time(), metric=metric, value=None,
                                   details={"error": f"{type(exc).__name__}: {exc}"}))  # fmt: skip

    def perplexity(self, cmd: cmds.Perplexity) -> None:
        from engines.quality.perplexity import load_corpus, perplexity

        assert self.engine is not None
        try:
            tok = self._tokenizer()
            docs = [tok.encode(t).ids for t in load_corpus(cmd.corpus)]
            t0 = time.perf_counter()
            res = perplexity(docs, self.engine.logprobs, cmd.window, cmd.stride)
        except (NotImplementedError, ValueError) as exc:
            return self._quality_error("perplexity", exc)
        details = {"corpus": cmd.corpus, "window": cmd.window, "stride": cmd.stride, "tokens": res.tokens,
                   "windows": res.windows, "nll": res.nll, "seconds": time.perf_counter() - t0}  # fmt: skip
        self.emit(ev.QualityResult(self.run_id, time.time(), metric="perplexity", value=res.ppl, details=details))

    def humaneval(self, cmd: cmds.HumanEval) -> None:
        from engines.quality.humaneval import load_problems, truncate

        assert self.engine is not None
        try:
            tok = self._tokenizer()
            eos = {i for i in (tok.token_to_id("<|endoftext|>"), tok.token_to_id("</s>")) if i is not None}
            problems = list(load_problems().values())[: cmd.problems or None]
            samples, t0 = [], time.perf_counter()
            for i, problem in enumerate(problems):
                ids = tok.encode(problem.prompt).ids
                outs = self.engine.sample([ids] * cmd.samples, cmd.max_new_tokens, cmd.temperature,
                                          cmd.seed + i)  # fmt: skip
                for out in outs:
                    cut = next((j for j, t in enumerate(out) if t in eos), len(out))
                    samples.append([problem.task_id, truncate(tok.decode(out[:cut]))])
                self.emit(ev.Progress(self.run_id, time.time(), index=-1, phase="humaneval", done=i + 1,
                                      total=len(problems)))  # fmt: skip
        except (NotImplementedError, ValueError) as exc:
            return self._quality_error("pass@k", exc)
        self.emit(ev.Completions(self.run_id, time.time(), samples=samples, gen_s=time.perf_counter() - t0))

    def tokens(self, cmd: cmds.Tokens) -> None:
        """Greedy tokens for given prompts (or synthetic ones): the agreement check."""
        prompts = cmd.prompts or self.prompts(cmd.batch, cmd.input_len, cmd.seed)
        assert self.engine is not None
        res = self.engine.generate(prompts, cmd.max_new_tokens)
        self.emit(ev.GreedyTokens(self.run_id, time.time(), prompts=prompts, tokens=res.tokens))


def _commands(group: tp.Group | None) -> Iterator[dict[str, Any]]:
    """Commands from stdin; under torchrun rank 0 reads them and broadcasts each to the other ranks."""
    if group is not None and not group.leader:
        while True:
            try:
                yield group.broadcast(None)
            except RuntimeError:  # rank 0 is gone; torchrun ends the group
                return
    for line in sys.stdin:
        cmd = json.loads(line)
        if group is not None:
            group.broadcast(cmd)
        yield cmd
    if group is not None:  # stdin closed: the parent is gone, so the other ranks stop too
        group.broadcast(cmds.to_dict(cmds.Exit()))


def main() -> int:
    events_fd = os.dup(1)
    os.dup2(2, 1)  # C and Python prints from libraries must not corrupt the event stream
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides about Ctrl-C
    threading.Thread(target=_watch_parent, args=(os.getppid(), tp.grandparent(sys.argv[1:])), daemon=True).start()
    group = tp.start(sys.argv[1:])
    if group is None or group.leader:
        out = os.fdopen(events_fd, "w", buffering=1)
    else:  # one event stream: rank 0's
        os.close(events_fd)
        out = open(os.devnull, "w")
    worker = Worker(out, group)
    handlers = {cmds.Load: worker.load, cmds.RunCell: worker.cell, cmds.Tokens: worker.tokens,
                cmds.Perplexity: worker.perplexity, cmds.HumanEval: worker.humaneval}  # fmt: skip
    for raw in _commands(group):
        try:
            cmd = cmds.from_dict(raw)
            if isinstance(cmd, cmds.Exit):
                break
            handlers[type(cmd)](cmd)
        except BrokenPipeError:
            return 1
        except Exception as exc:  # a failed load or tokens command: report it and stop
            text = "".join(traceback.format_exception(exc)).rstrip()
            worker.log(text, level="error")  # the traceback to the live log; the store keeps the cause
            worker.emit(ev.RunFinished(worker.run_id, time.time(), status="failed", error=one_line(exc)))
            if group is not None and not group.leader:
                print(f"rank {group.rank}: {text}", file=sys.stderr)
            return 1
    if worker.engine is not None:
        worker.engine.unload()
    if worker.side is not None:
        worker.side.close()
    if group is not None:
        group.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
