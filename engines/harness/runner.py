"""The grid runner: one worker process per run, events to subscribers, results to the store.

The parent owns what must survive the worker: OOM-dominance skipping, crash detection and
resumption in a fresh worker, cancellation, telemetry and every write to the database.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from engines import registry
from engines.harness.preflight import Executor, connect_executor
from engines.harness.worker_client import WorkerClient, WorkerExited
from engines.measure.hardware import fingerprint, resolve_device
from engines.measure.telemetry import Sampler
from engines.study import commands as cmds
from engines.study import events as ev
from engines.study.executor import ray_cpus
from engines.study.grid import Cell
from engines.study.schema import EngineRun, StudySpec
from store.db import Database, StoreError
from store.writer import RunWriter

Subscriber = Callable[[ev.Event], None]
RELOAD_PLACEMENT_S = 20.0
_ALLOC_FAILED = re.compile(r"memory allocation of \d+ bytes failed|std::bad_alloc|Cannot allocate memory|MemoryError")


@dataclass
class StudyResult:
    group_id: str
    run_ids: list[str] = field(default_factory=list)
    status: str = "done"


class _Cancelled(Exception):
    pass


class Runner:
    def __init__(self, spec: StudySpec, db: Database, *, subscribers: Iterable[Subscriber] = (),
                 cancel: threading.Event | None = None, telemetry_hz: float = 5.0,
                 executor: Executor | None = None):  # fmt: skip
        self.spec = spec
        self.executor = executor  # connected by the preflight; None: the runner connects it itself
        self.db = db
        self.subscribers = list(subscribers)
        self.cancel = cancel or threading.Event()
        self.telemetry_hz = telemetry_hz
        self._samples: queue.Queue = queue.Queue()  # (run id, t, cpu %, rss, gpus) from local or remote samplers
        self._local_run = ""  # the run the local sampler watches ("" between runs)
        self._cell_nvml_peak: dict[str, int] = {}  # per run: NVML memory peak (all GPUs summed) of the cell in flight
        self._cell_gpu_peaks: dict[str, dict[str, int]] = {}  # per run: the same per GPU ("node:index" remotely)
        self._last_commit = 0.0
        # Finished cells of this study's runs, in start order: {run id: (run, {cell: result})} for matched references.
        self._finished: dict[str, tuple[EngineRun, dict[Cell, dict]]] = {}
        self._emit_lock = threading.Lock()
        self._kind = "local"
        self._active: set[str] = set()  # runs in flight (the Ray executor runs several at once)
        # Interleaved runs hold their resources to the end: a placement waiting for them would wait forever.
        self._interleaving = False
        self._store_error: StoreError | None = None  # the first write the database refused
        self._outcomes: dict[str, dict[int, str]] = {}  # per run: cell index -> status
        self._errors: dict[str, str] = {}  # per run: the first cell error
        self._memory: dict[str, Any] = {}  # per run: its cells' predicted peaks (engines.harness.memplan.RunMemory)
        self._mem_plan: list[Any] = []  # the study's, per run in spec order, made in run()

    # --- plumbing ---------------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        with self._emit_lock:
            self._emit(event)

    def _emit(self, event: ev.Event) -> None:
        for sub in self.subscribers:
            try:
                sub(event)
            except Exception as exc:  # a broken subscriber must not lose results
                print(f"codebench: subscriber failed: {exc!r}", file=sys.stderr)

    def _on_sample(self, t: float, cpu: float, rss: int, gpus: list) -> None:
        self._samples.put((self._local_run, t, cpu, rss, gpus))

    def _drain_samples(self, writer: RunWriter) -> None:
        while True:
            try:
                run_id, t, cpu, rss, gpus = self._samples.get_nowait()
            except queue.Empty:
                break
            if not run_id:
                continue
            writer.add_telemetry(run_id, t, cpu, rss, gpus)
            used = [g["mem_used"] for g in gpus if g.get("mem_used") is not None]
            if used and run_id in self._cell_nvml_peak:
                self._cell_nvml_peak[run_id] = max(self._cell_nvml_peak[run_id], sum(used))
                peaks = self._cell_gpu_peaks.setdefault(run_id, {})
                for g in gpus:
                    if g.get("mem_used") is not None:
                        key = f"{g['node']}:{g.get('index', 0)}" if g.get("node") else str(g.get("index", 0))
                        peaks[key] = max(peaks.get(key, 0), g["mem_used"])
            self.emit(ev.TelemetrySample(run_id, t, cpu_percent=cpu, rss_bytes=rss, gpus=gpus))
        if time.monotonic() - self._last_commit > 1.0:
            writer.commit()
            self._last_commit = time.monotonic()

    def _wait(self, client: WorkerClient, writer: RunWriter, done: Callable[[ev.Event], bool],
              timeout_s: float | None = None) -> ev.Event | WorkerExited | None:  # fmt: skip
        """Pump events until `done(event)`; None on timeout. Raises _Cancelled."""
        deadline = time.monotonic() + timeout_s if timeout_s else None
        while True:
            if self.cancel.is_set():
                raise _Cancelled
            if deadline and time.monotonic() > deadline:  # also while events keep coming: a chatty hang is a hang
                return None
            item = client.get(0.1)
            self._drain_samples(writer)
            if item is None:
                continue
            if isinstance(item, WorkerExited):
                return item
            if isinstance(item, ev.CellStarted):
                self._cell_nvml_peak[client.run_id] = 0
                self._cell_gpu_peaks[client.run_id] = {}
            if not isinstance(item, (ev.CellFinished, ev.Loaded, ev.RunFinished, ev.QualityResult, ev.Completions,
                                     ev.GreedyTokens)):
                self.emit(item)
            if done(item):
                return item

    # --- the study --------------------------------------------------------------------

    def run(self) -> StudyResult:
        spec = self.spec
        executor = self.executor or connect_executor(spec)
        kind = self._kind = executor.kind
        device = executor.device  # a Ray node resolves its own
        host = fingerprint()
        from engines.harness.memplan import host_fits, plan

        # On Ray a node resolves its own device: its capacity is not this host's, so it stays unknown there.
        self._mem_plan = plan(spec, device, host_fits(self.db, host, device), known_capacity=kind == "local")
        writer = SerialWriter(RunWriter(self.db))
        sampler = Sampler(self._on_sample, hz=self.telemetry_hz)
        if kind == "local":  # Ray workers are sampled on their own nodes
            sampler.start()
        result = StudyResult(writer.begin_group(spec.model_dump(mode="json"), spec.name))
        if spec.check:
            self._reference_tokens(resolve_device(spec.device))
        try:
            searching = spec.load is not None and spec.load.search is not None  # each run bisects on its own
            if spec.schedule == "interleaved" and len(spec.runs) > 1 and not searching:
                from engines.harness.interleave import Interleaved

                Interleaved(self, device, host, writer, sampler, result).run()
            else:
                self._sequential(device, host, writer, sampler, result)
            if self.cancel.is_set():
                result.status = "cancelled"
        except StoreError as exc:
            self._store_error = self._store_error or exc
        finally:
            sampler.stop()
            try:
                self._drain_samples(writer)
                writer.commit()
            except StoreError as exc:
                self._store_error = self._store_error or exc
            writer.close()
        if self._store_error is not None:
            raise self._store_error
        return result

    def _sequential(self, device: str, host: dict, writer: "SerialWriter", sampler: Sampler, result: StudyResult,
                    run_ids: list[str] | None = None) -> None:  # fmt: skip
        """One run's whole grid after another (on Ray: every run at once, as the cluster has room).
        `run_ids`: rows made already (a study that fell back from interleaving)."""
        if self._kind == "ray":
            return self._run_concurrently(device, host, writer, sampler, result, run_ids)
        for i, engine_run in enumerate(self.spec.runs):
            given = run_ids[i] if run_ids else None
            if self.cancel.is_set():
                result.status = "cancelled"
                if given:  # made but never started: it ends as cancelled, not as an interrupted run
                    self._finish_run(writer, given, "cancelled", "cancelled before it started", sampler)
                    result.run_ids.append(given)
                continue
            run_id, status = self._run_one(engine_run, device, host, writer, sampler, result.group_id, given)
            result.run_ids.append(run_id)
            if status == "cancelled":
                result.status = "cancelled"

    def _run_concurrently(self, device: str, host: dict, writer: "SerialWriter", sampler: Sampler,
                          result: StudyResult, run_ids: list[str] | None = None) -> None:  # fmt: skip
        """Every run at once, as the cluster has room; a run measured against a reference waits for it."""
        from engines.study.speculation import reference_match

        runs = self.spec.runs
        done = [threading.Event() for _ in runs]
        outcome: list[tuple[str, str] | None] = [None] * len(runs)

        def one(i: int) -> None:
            given = run_ids[i] if run_ids else None
            try:
                for j in range(i):
                    if reference_match(runs[i], runs[j], registry.get(runs[i].engine).reference):
                        while not done[j].wait(0.2) and not self.cancel.is_set():
                            pass
                if not self.cancel.is_set():
                    outcome[i] = self._run_one(runs[i], device, host, writer, sampler, result.group_id, given)
                elif given:
                    self._finish_run(writer, given, "cancelled", "cancelled before it started", sampler)
                    outcome[i] = (given, "cancelled")
            finally:
                done[i].set()

        threads = [threading.Thread(target=one, args=(i,), name=f"codebench-run-{i}", daemon=True)
                   for i in range(len(runs))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short joins keep Ctrl-C deliverable to the main thread
        result.run_ids += [o[0] for o in outcome if o]
        if self.cancel.is_set() or any(o and o[1] == "cancelled" for o in outcome):
            result.status = "cancelled"

    def _start_worker(self, run_id: str, engine_run: EngineRun, device: str, attempt: int,
                      sampler: Sampler) -> WorkerClient:  # fmt: skip
        argv = worker_command(engine_run, device)
        if self._kind == "ray":
            from engines.harness.ray_executor import RayWorkerClient

            sink = lambda t, cpu, rss, gpus: self._samples.put((run_id, t, cpu, rss, gpus))  # noqa: E731
            client: Any = RayWorkerClient(run_id, engine_run, device, sink, argv=argv, telemetry_hz=self.telemetry_hz,
                                          busy=lambda: len(self._active) > 1 and not self._interleaving,
                                          cpus_per_rank=ray_cpus(self.spec.executor),
                                          extra_env=self.spec.worker_env,
                                          # an interleaved run that lost its node: the others hold theirs, so
                                          # it waits briefly, then resumes after them (engines.harness.interleave)
                                          placement_timeout_s=RELOAD_PLACEMENT_S if self._interleaving and attempt > 1
                                          else None)  # fmt: skip
            pid = client.start()
            device = client.device
        else:
            client = WorkerClient(run_id, argv=argv, extra_env=self.spec.worker_env)
            pid = client.start()
            self._local_run = run_id
            sampler.watch(pid)
        self.emit(ev.WorkerStarted(run_id, time.time(), pid=pid, attempt=attempt))
        client.send(cmds.Load(run_id, engine_run.model_dump(mode="json"), self.spec.model, device,
                              self.spec.cell_mem_limit_bytes))  # fmt: skip
        return client

    def _finish_cell(self, writer: RunWriter, run_id: str, index: int, cell: Cell, status: str,
                     result: dict | None = None, error: str = "") -> None:  # fmt: skip
        self._outcomes.setdefault(run_id, {})[index] = status
        mem = self._memory.get(run_id)
        if mem is not None and (entry := mem.entry(index)) is not None:  # every cell, run or not, keeps its prediction
            result = {**(result or {})}
            result["metrics"] = {**(result.get("metrics") or {}), "memory": entry}
        if status in ("failed", "crashed") and run_id not in self._errors:
            self._errors[run_id] = (error.splitlines() or [""])[0][:300]
        row = writer.add_cell(run_id, index, cell, status, result=result, error=error)
        writer.commit()
        self._last_commit = time.monotonic()
        shown = {**(result or {}), "flags": row.flags}
        self.emit(ev.CellFinished(run_id, time.time(), index=index, status=status, result=shown, error=error))

    def _loaded_worker(self, run_id: str, engine_run: EngineRun, device: str, attempt: int, sampler: Sampler,
                       writer: RunWriter) -> tuple[WorkerClient | None, str]:  # fmt: skip
        """A worker with the model loaded, or (None, why loading failed)."""
        try:
            client = self._start_worker(run_id, engine_run, device, attempt, sampler)
        except RuntimeError as exc:  # no Ray node took it
            return None, f"starting {engine_run.label()} failed: {exc}"
        if client.remote:
            writer.set_host(run_id, client.host)
        try:
            loaded = self._wait(client, writer, lambda e: isinstance(e, (ev.Loaded, ev.RunFinished)),
                                self.spec.load_timeout_s)  # fmt: skip
        except BaseException:  # Ctrl-C or a database failure mid-load: the worker goes too
            client.kill()
            raise
        if loaded is None:
            client.kill()
            return None, f"loading {engine_run.label()} timed out after {self.spec.load_timeout_s:g} s; worker killed"
        if not isinstance(loaded, ev.Loaded):
            why = loaded.error if isinstance(loaded, ev.RunFinished) else loaded.cause()
            client.close()
            return None, f"loading {engine_run.label()} failed: {why}"
        writer.set_runtime(run_id, {"load_s": loaded.load_s, "dtype": loaded.dtype, "weight_bytes": loaded.weight_bytes,
                                    "versions": loaded.versions, **loaded.extra}, loaded.device)  # fmt: skip
        server = loaded.extra.get("server_pid")
        if isinstance(server, int) and server > 0:  # a local server under test: its memory counts too
            client.watch_also(server) if client.remote else sampler.watch(client.proc.pid, server)
        self.emit(loaded)
        return client, ""

    def _record_quality(self, writer: RunWriter, run_id: str, metric: str, value: float | None, details: dict) -> None:
        writer.add_quality(run_id, metric, value, details)
        self.emit(ev.QualityResult(run_id, time.time(), metric=metric, value=value, details=details))

    def _against_reference(self, engine_run: EngineRun, run_id: str, cell: Cell, result: dict) -> None:
        """Speculative and shared-prefix runs store speed-up and token identity against their reference run."""
        from engines.study.speculation import compare_to_reference, reference_match
        from store.metrics import summarise

        result["tokens_per_s"] = summarise(result.get("repeats") or [], cell.batch, cell.output_len)["tokens_per_s"]
        self._finished.setdefault(run_id, (engine_run, {}))[1][cell] = result
        info = registry.get(engine_run.engine)
        for ref_id, (ref_run, ref_cells) in list(self._finished.items()):
            if ref_id != run_id and reference_match(engine_run, ref_run, info.reference) and cell in ref_cells:
                ref = compare_to_reference(engine_run, result, ref_run.label(), ref_id, ref_cells[cell], info.lossy)
                result.setdefault("metrics", {})["reference"] = ref
                break

    def _reference_tokens(self, device: str) -> None:
        """Greedy tokens of the check's reference engine, once per study, in a worker of its own."""
        c = self.spec.check
        assert c is not None
        try:
            self._check_ref = greedy_tokens(self.spec.model, c.reference, device, c.tokens, batch=c.prompts,
                                            input_len=c.input_len, seed=c.seed)  # fmt: skip
        except (RuntimeError, TimeoutError) as exc:
            self._check_ref = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)

    def _agreement(self, client: WorkerClient, writer: RunWriter, run_id: str) -> None:
        from engines.quality.agreement import summary

        ref = getattr(self, "_check_ref", None)
        label = self.spec.check.reference.label()
        if not isinstance(ref, tuple):
            self._record_quality(writer, run_id, "agreement", None, {"reference": label, "error": f"reference failed: {ref}"})
            return
        prompts, ref_tokens = ref
        client.send(cmds.Tokens(self.spec.check.tokens, prompts=prompts))
        out = self._wait(client, writer, lambda e: isinstance(e, (ev.GreedyTokens, ev.RunFinished)))
        if not isinstance(out, ev.GreedyTokens):
            why = out.error if isinstance(out, ev.RunFinished) else _died(out)
            self._record_quality(writer, run_id, "agreement", None, {"reference": label, "error": why})
            return
        s = summary(ref_tokens, out.tokens)
        self._record_quality(writer, run_id, "agreement", s["token_agreement"], {"reference": label, **s})

    def _quality(self, client: WorkerClient, writer: RunWriter, run_id: str) -> None:
        """Perplexity and HumanEval with the loaded engine; completions are scored here, in the sandbox."""
        q = self.spec.quality
        assert q is not None
        is_result = lambda e: isinstance(e, (ev.QualityResult, ev.Completions))  # noqa: E731
        if "perplexity" in q.metrics:
            client.send(cmds.Perplexity(q.corpus, q.window, q.stride))
            out = self._wait(client, writer, is_result)
            if isinstance(out, ev.QualityResult):
                self._record_quality(writer, run_id, out.metric, out.value, out.details)
            else:
                self._record_quality(writer, run_id, "perplexity", None, {"error": _died(out)})
                return
        if "pass@k" in q.metrics:
            client.send(cmds.HumanEval(q.problems, q.samples, q.seed, q.temperature, q.max_new_tokens))
            out = self._wait(client, writer, is_result)
            if isinstance(out, ev.QualityResult):  # the engine cannot complete: its reason, per k
                for k in q.k:
                    self._record_quality(writer, run_id, f"pass@{k}", None, out.details)
                return
            if not isinstance(out, ev.Completions):
                for k in q.k:
                    self._record_quality(writer, run_id, f"pass@{k}", None, {"error": _died(out)})
                return
            from engines.quality.humaneval import evaluate
            from engines.quality.sandbox import SandboxUnavailable

            try:
                score = evaluate([(t, c) for t, c in out.samples], q.k)
            except SandboxUnavailable as exc:
                for k in q.k:
                    self._record_quality(writer, run_id, f"pass@{k}", None, {"error": str(exc)})
                return
            details = {"problems": len(score.tasks), "samples": q.samples, "temperature": q.temperature,
                       "max_new_tokens": q.max_new_tokens, "outcomes": score.counts(), "generate_s": out.gen_s}  # fmt: skip
            for k in q.k:
                value = score.pass_at.get(k)
                extra = {} if value is not None else {"error": f"k={k} needs at least {k} samples per problem"}
                self._record_quality(writer, run_id, f"pass@{k}", value, {**details, **extra})

    def _begin_run(self, engine_run: EngineRun, host: dict, writer: RunWriter, group_id: str, schedule: str) -> str:
        spec = self.spec
        run_id = writer.begin_run(
            group_id=group_id, model=spec.model, engine=engine_run.engine, label=engine_run.label(),
            config=engine_run.model_dump(mode="json"), spec=spec.model_dump(mode="json"), host=host,
            cells_total=len(spec.cells()), name=spec.name,
        )  # fmt: skip
        writer.update_runtime(run_id, {"schedule": schedule})
        self._memory[run_id] = next((m for m in self._mem_plan if m.run == engine_run), None)
        self._active.add(run_id)
        self.emit(ev.RunStarted(run_id, time.time(), label=engine_run.label(), cells_total=len(spec.cells())))
        return run_id

    def _cell_command(self, index: int, cell: Cell, timing: dict | None = None,
                      slot: dict | None = None) -> cmds.RunCell:  # fmt: skip
        spec = self.spec
        return cmds.RunCell(index, cell.batch, cell.input_len, cell.output_len, timing or spec.timing.model_dump(),
                            label=cell.label(), seed=spec.workload.cell_seed(cell.batch, cell.input_len),
                            workload=spec.workload.model_dump(mode="json"), params=cell.params(),
                            slot=slot or None, load=spec.load.model_dump(mode="json") if spec.load else None)  # fmt: skip

    def _after_grid(self, engine_run: EngineRun, run_id: str, client: WorkerClient | None, device: str,
                    writer: RunWriter, sampler: Sampler, attempt: int) -> tuple[WorkerClient | None, str, str, int]:  # fmt: skip
        """Quality and the agreement check with the run's loaded worker: (client, status, error, attempt)."""
        status, error = "done", ""
        for wanted, measure in ((self.spec.quality, self._quality), (self.spec.check, self._agreement)):
            if wanted and status == "done":
                if client is None:  # the last cell crashed its worker: quality needs a fresh one
                    attempt += 1
                    client, error = self._loaded_worker(run_id, engine_run, device, attempt, sampler, writer)
                    status = "done" if client else "failed"
                if client is not None:
                    if not client.remote:
                        self._local_run = run_id
                        sampler.watch(client.proc.pid)
                    measure(client, writer, run_id)
        return client, status, error, attempt

    def _skip_reason(self, run_id: str, index: int, cell: Cell, ooms: list[Cell]) -> str:
        """Why a cell is not started: it dominates a cell that ran out of memory, or (--skip-predicted-oom)
        the memory model predicts it will not fit; "" to run it."""
        blocker = next((o for o in ooms if cell.dominates(o)), None)
        if blocker is not None:
            return f"larger than OOM cell {blocker.label()}"
        mem = self._memory.get(run_id)
        entry = mem.entry(index) if mem is not None and self.spec.skip_predicted_oom else None
        if entry is not None and entry["fits"] is False:
            from engines.harness.memplan import oom_reason

            return oom_reason(entry)
        return ""

    def _death_status(self, out: WorkerExited | None) -> str:
        """A worker that died of an allocation failure under --cell-mem-limit ran out of memory (a Rust or C++
        allocator aborts instead of raising): `oom`, so larger cells are skipped. Any other death: `crashed`."""
        if isinstance(out, WorkerExited) and self.spec.cell_mem_limit_bytes and _ALLOC_FAILED.search(out.stderr_tail):
            return "oom"
        return "crashed"

    def _finish_run(self, writer: RunWriter, run_id: str, status: str, error: str, sampler: Sampler) -> None:
        if self._kind == "local":
            sampler.watch(None)
        outcomes = self._outcomes.get(run_id) or {}
        if status == "done" and outcomes and set(outcomes.values()) <= {"failed", "crashed"}:
            first = outcomes[min(outcomes)]  # a run of which no cell ran is a failed run, not a done one
            status, error = "failed", f"every cell {'crashed' if first == 'crashed' else 'failed'}: {self._errors[run_id]}"
        try:
            self._drain_samples(writer)
            writer.finish_run(run_id, status, error)
        except StoreError as exc:  # the disk filled or the file was locked: the other runs still get closed
            self._store_error = self._store_error or exc
        self.emit(ev.RunFinished(run_id, time.time(), status=status, error=error))
        self._active.discard(run_id)
        self._local_run = "" if self._local_run == run_id else self._local_run

    def _search(self, cells: list[Cell]):
        """The peak-goodput search of a serving study (engines/harness/search.py), or None."""
        load = self.spec.load
        if load is None or load.search != "peak-goodput":
            return None
        from engines.harness.search import PeakSearch

        return PeakSearch(cells, load.attainment, load.search_axis)

    def _run_one(self, engine_run: EngineRun, device: str, host: dict, writer: RunWriter, sampler: Sampler,
                 group_id: str, run_id: str | None = None, start: int = 0,
                 ooms: list[Cell] | None = None) -> tuple[str, str]:  # fmt: skip
        """One run's grid from cell `start` on (a run resumed after the interleaved ones: `ooms` it met)."""
        spec = self.spec
        cells = spec.cells()
        run_id = run_id or self._begin_run(engine_run, host, writer, group_id, "sequential")
        search = self._search(cells)
        pending = list(range(start, len(cells))) if search is None else [i for i in [search.next()] if i is not None]
        ooms = list(ooms or [])

        def settled(index: int, status: str, result: dict | None = None) -> None:
            """A cell is stored; a search picks the next one from it."""
            if search is not None:
                search.record(index, status, (result or {}).get("metrics"))
                pending[:] = [i for i in [search.next()] if i is not None]

        status, error, attempt = "done", "", 0
        client: WorkerClient | None = None
        current: int | None = None
        try:
            while pending:
                attempt += 1
                client, error = self._loaded_worker(run_id, engine_run, device, attempt, sampler, writer)
                if client is None:
                    status = "failed"
                    break
                while pending:
                    index = pending.pop(0)
                    cell = cells[index]
                    why = self._skip_reason(run_id, index, cell, ooms)
                    if why:
                        self._finish_cell(writer, run_id, index, cell, "skipped", error=why)
                        settled(index, "skipped")
                        continue
                    current = index
                    client.send(self._cell_command(index, cell))
                    out = self._wait(client, writer, lambda e, i=index: isinstance(e, ev.CellFinished) and e.index == i,
                                     spec.cell_timeout_s)  # fmt: skip
                    current = None
                    if isinstance(out, ev.CellFinished):
                        result = dict(out.result)
                        if self._cell_nvml_peak.get(run_id):
                            result["peak_nvml_bytes"] = self._cell_nvml_peak[run_id]
                            result.setdefault("metrics", {})["peak_nvml_bytes_per_gpu"] = self._cell_gpu_peaks[run_id]
                        if out.status == "done":
                            self._against_reference(engine_run, run_id, cell, result)
                        self._finish_cell(writer, run_id, index, cell, out.status, result, out.error)
                        if out.status == "oom":
                            ooms.append(cell)
                        settled(index, out.status, result)
                        continue
                    if out is None:
                        client.kill()
                        why = f"cell timed out after {spec.cell_timeout_s:g} s; worker killed"
                    else:
                        why = out.cause()
                    died = self._death_status(out)
                    self._finish_cell(writer, run_id, index, cell, died, error=why)
                    if died == "oom":
                        ooms.append(cell)
                    settled(index, died)
                    client.close()
                    client = None  # a fresh worker resumes the remaining cells
                    break
            if search is not None and status == "done":
                for index in search.unmeasured():
                    self._finish_cell(writer, run_id, index, cells[index], "skipped",
                                      error="not measured: the peak-goodput search did not need it")  # fmt: skip
                writer.update_runtime(run_id, {"search": search.summary()})
            if status == "done":
                client, status, error, attempt = self._after_grid(engine_run, run_id, client, device, writer, sampler,
                                                                  attempt)  # fmt: skip
        except _Cancelled:
            status = "cancelled"
            if client:
                client.kill()
            if current is not None:
                self._finish_cell(writer, run_id, current, cells[current], "cancelled", error="cancelled by user")
        except BaseException as exc:  # the database refused a write, or a bug: the run did not finish its grid
            status, error = "failed", str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if client:
                client.close()
            self._finish_run(writer, run_id, status, error, sampler)
        return run_id, status


class SerialWriter:
    """The study's one RunWriter behind a lock: concurrent runs (the Ray executor) share it."""

    def __init__(self, writer: RunWriter):
        self._writer = writer
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._writer, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return locked


def worker_command(run: EngineRun, device: str) -> list[str]:
    """The argv that starts a worker for `run` (tensor-parallel runs get a launcher: engines.harness.tp)."""
    try:
        from engines.harness.tp import worker_command as tp_command
    except ImportError:
        return [sys.executable, "-m", "engines.harness.worker"]
    return tp_command(run, device)


def _died(out: object) -> str:
    return out.describe() if isinstance(out, WorkerExited) else "no answer from the worker"


def greedy_tokens(model: str, engine_run: EngineRun, device: str, max_new_tokens: int, *,
                  prompts: list[list[int]] | None = None, batch: int = 8, input_len: int = 32,
                  seed: int = 0, timeout_s: float = 600) -> tuple[list[list[int]], list[list[int]]]:  # fmt: skip
    """(prompts, greedy tokens) from `engine_run` in its own worker: the agreement check."""
    client = WorkerClient("check", argv=worker_command(engine_run, resolve_device(device)))
    client.start()
    try:
        client.send(cmds.Load("check", engine_run.model_dump(mode="json"), model, resolve_device(device)))
        client.send(cmds.Tokens(max_new_tokens, prompts=prompts, batch=batch, input_len=input_len, seed=seed))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            item = client.get(0.2)
            if isinstance(item, ev.GreedyTokens):
                return item.prompts, item.tokens
            if isinstance(item, ev.RunFinished):
                raise RuntimeError(item.error)
            if isinstance(item, WorkerExited):
                raise RuntimeError(f"{item.describe()}\n{item.stderr_tail}")
        raise TimeoutError(f"{engine_run.label()} gave no tokens within {timeout_s:g} s")
    finally:
        client.close()
