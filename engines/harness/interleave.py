"""The interleaved schedule: every run of a study stays loaded, and each cell is measured repeat by repeat
across the runs (A B C, then B C A, ...), one worker generating at a time.

A host that drifts (a shared VM, a GPU warming up, a neighbour starting a job) then moves every run's
figures alike instead of one run's, so the ratios between runs keep only the differences between engines.
A cell's first slot in each run runs the study's warm-up; every later slot one untimed minibatch, since
the caches and clocks went to another worker in between. A run whose worker dies or runs out of memory
loses that cell only (recorded as today); the others go on. When the runs cannot be held at once, the
study falls back to the sequential schedule and each run's notes say why.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engines import registry
from engines.study import events as ev
from engines.study.grid import Cell
from engines.study.schema import EngineRun
from store.db import StoreError

if TYPE_CHECKING:
    from engines.harness.runner import Runner, StudyResult
    from engines.harness.worker_client import WorkerClient
    from engines.measure.telemetry import Sampler

_OOM_TEXT = re.compile(r"out of memory|OutOfMemory|MemoryError|Cannot allocate memory|bad_alloc|could not create a context",
                       re.I)  # fmt: skip
HEADROOM = 0.9  # of the free memory the loaded runs may take together


@dataclass
class Lane:
    """One run of the study as the interleaved schedule drives it."""

    run: EngineRun
    run_id: str
    client: WorkerClient | None = None
    status: str = "done"  # done (so far), failed, cancelled
    error: str = ""
    attempt: int = 0
    ooms: list[Cell] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)  # slot results of the cell in flight
    open: bool = False  # a cell is in flight and not yet recorded
    index: int = -1  # that cell
    resume: int | None = None  # deferred: lost its Ray node and no node had room; resumes here after the others
    nvml_peak: int = 0
    gpu_peaks: dict[str, int] = field(default_factory=dict)


def rotation(lanes: list[Lane], round_: int) -> list[Lane]:
    """Round r starts with the r-th run, so no run always goes first (A B C, B C A, C A B, ...)."""
    k = round_ % len(lanes) if lanes else 0
    return lanes[k:] + lanes[:k]


def oom_like(why: str) -> bool:
    return bool(_OOM_TEXT.search(why or "")) or "killed by SIGKILL" in (why or "")


def merge_slots(parts: list[dict[str, Any]], cell: Cell) -> dict[str, Any]:
    """One cell result from its slots: every repeat, the last slot's peaks (later slots keep the earlier
    peaks), and the per-cell metrics recomputed over all repeats."""
    from engines.measure.roofline import cell_efficiency
    from engines.study.speculation import cell_metrics

    repeats = [r for p in parts for r in p.get("repeats") or []]
    last = parts[-1]
    metrics = {k: v for k, v in (last.get("metrics") or {}).items() if k not in ("efficiency", "speculative", "breakdown")}
    efficiency = cell_efficiency(repeats)
    if efficiency:
        metrics["efficiency"] = efficiency
    metrics.update(cell_metrics([e for r in repeats for e in r.get("extra") or []], cell.batch, cell.output_len))
    digests = {(p.get("metrics") or {}).get("tokens_sha256") for p in parts}
    metrics["tokens_stable"] = len(digests) == 1 and all((p.get("metrics") or {}).get("tokens_stable", True) for p in parts)
    return {**last, "repeats": repeats, "metrics": metrics, "started_at": parts[0].get("started_at")}


def fits(model: str, runs: list[EngineRun], cells: list[Cell], device: str) -> str:
    """'' when the runs can stay loaded side by side, else why not (estimated footprint over free memory)."""
    from engines.models.footprint import estimate, free_bytes

    infos = [registry.get(r.engine) for r in runs]
    sizes = [estimate(model, r, cells, info.kv_cache, info.reads_gguf) for r, info in zip(runs, infos)]
    free = free_bytes(device)
    if free is None or any(s is None for s in sizes):
        return ""  # nothing to go on: an OOM at load still falls back
    need = sum(s for s in sizes if s)
    if need <= HEADROOM * free:
        return ""
    return (f"the {len(runs)} runs need about {need / 2**30:.1f} GiB loaded together and {device} has "
            f"{free / 2**30:.1f} GiB free")


class Interleaved:
    def __init__(self, runner: Runner, device: str, host: dict, writer: Any, sampler: Sampler,
                 result: StudyResult) -> None:  # fmt: skip
        self.r = runner
        self.spec = runner.spec
        self.device, self.host, self.writer, self.sampler, self.result = device, host, writer, sampler, result

    # --- setup ---------------------------------------------------------------------------

    def run(self) -> None:
        from engines.harness.runner import _Cancelled

        spec, r = self.spec, self.r
        cells = spec.cells()
        lanes = [Lane(run, r._begin_run(run, self.host, self.writer, self.result.group_id, "interleaved"))
                 for run in spec.runs]  # fmt: skip
        self.result.run_ids += [lane.run_id for lane in lanes]
        r._interleaving = True
        why = fits(spec.model, spec.runs, cells, self.device) if r._kind == "local" else self._ray_room()
        try:
            if not why:
                why = self._load_all(lanes)
            if not why:
                for index, cell in enumerate(cells):
                    if r.cancel.is_set():
                        raise _Cancelled
                    self._cell(lanes, index, cell)
                for lane in lanes:
                    if lane.status == "done":
                        lane.client, lane.status, lane.error, lane.attempt = r._after_grid(
                            lane.run, lane.run_id, lane.client, self.device, self.writer, self.sampler, lane.attempt)
            self._resume_deferred(lanes, cells)
        except _Cancelled:
            why = ""
            self._cancel(lanes, cells)
        except BaseException as exc:  # the database refused a write, or a bug: no run finished its grid
            why = ""
            text = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            for lane in lanes:
                if lane.status in ("done", "deferred"):
                    lane.status, lane.error = "failed", text
            raise
        finally:
            r._interleaving = False
            if not why:
                for lane in lanes:
                    if lane.client:
                        lane.client.close()
                    if lane.status != "resumed":  # _run_one finished those
                        r._finish_run(self.writer, lane.run_id, lane.status, lane.error, self.sampler)
        if why:
            self._fall_back(lanes, why)

    def _ray_room(self) -> str:
        """Ray: every run's actor must find its cores (and GPUs) at once, or the runs go out as before."""
        import ray

        from engines.harness.ray_executor import resources
        from engines.study.executor import ray_cpus

        cpus = ray_cpus(self.spec.executor)
        want: dict[str, float] = {}
        for run in self.spec.runs:
            for key, n in resources(run, self.device, cpus).items():
                want[key] = want.get(key, 0.0) + n
        free: dict = {}
        for _ in range(20):  # just after connecting, Ray Client may not report every node's resources yet
            free = ray.available_resources()
            if _room(want, free):
                return ""
            time.sleep(0.25)
        short = [f"{n:g} {_RAY_KEY[k]} wanted, {free.get(_RAY_KEY[k], 0.0):g} free"
                 for k, n in want.items() if n > free.get(_RAY_KEY[k], 0.0)]  # fmt: skip
        return f"the cluster has no room for all {len(self.spec.runs)} runs at once ({', '.join(short)})"

    def _load_all(self, lanes: list[Lane]) -> str:
        """Load every run's worker; '' when done, or why the study must fall back (an OOM with others loaded)."""
        r = self.r
        for lane in lanes:
            lane.client, err = self._load(lane)
            if lane.client is not None:
                continue
            placed = "no Ray node offered" not in err
            if (oom_like(err) or not placed) and any(other.client for other in lanes):
                for other in lanes:
                    if other.client:
                        other.client.close()
                        other.client = None
                what = "ran out of memory" if placed else "found no Ray node with room"
                return f"loading {lane.run.label()} {what} with other runs loaded ({_first(err)})"
            lane.status, lane.error = "failed", err
        r._active.update(lane.run_id for lane in lanes)
        return ""

    def _load(self, lane: Lane) -> tuple[WorkerClient | None, str]:
        lane.attempt += 1
        self.r._local_run = lane.run_id
        return self.r._loaded_worker(lane.run_id, lane.run, self.device, lane.attempt, self.sampler, self.writer)

    def _fall_back(self, lanes: list[Lane], why: str) -> None:
        note = f"schedule: sequential instead of interleaved: {why}"
        for lane in lanes:
            self.writer.add_note(lane.run_id, note)
            self.r.emit(ev.Log(lane.run_id, time.time(), level="warning", message=note))
        for lane in lanes:
            self.writer.update_runtime(lane.run_id, {"schedule": "sequential"})
        self.result.run_ids.clear()
        for planned in self.r._mem_plan:
            planned.alone()
        self.r._sequential(self.device, self.host, self.writer, self.sampler, self.result,
                           run_ids=[lane.run_id for lane in lanes])  # fmt: skip

    # --- one cell across the runs --------------------------------------------------------

    def _cell(self, lanes: list[Lane], index: int, cell: Cell) -> None:
        r, timing = self.r, self.spec.timing
        live = [lane for lane in lanes if lane.status == "done"]
        for lane in live:
            lane.parts, lane.nvml_peak, lane.gpu_peaks = [], 0, {}
            why = r._skip_reason(lane.run_id, index, cell, lane.ooms)
            if why:
                r._finish_cell(self.writer, lane.run_id, index, cell, "skipped", error=why)
                lane.open = False
            else:
                lane.open, lane.index = True, index
        rewarm = min(timing.warmup, 1)
        total = timing.warmup + timing.iters + (timing.repeats - 1) * (rewarm + timing.iters)
        for round_ in range(timing.repeats):
            for lane in rotation(live, round_):
                if lane.open and lane.status == "done":
                    done = 0 if round_ == 0 else timing.warmup + timing.iters + (round_ - 1) * (rewarm + timing.iters)
                    slot = {"round": round_, "keep_peak": round_ > 0, "done": done, "total": total,
                            "peers": [other.client.pid for other in lanes if other is not lane and other.client]}
                    self._slot(lane, index, cell, slot, timing.warmup if round_ == 0 else rewarm)
        for lane in live:  # in the study's order: a reference run's cell is recorded before the runs measured against it
            if lane.open:
                result = merge_slots(lane.parts, cell)
                if lane.nvml_peak:
                    result["peak_nvml_bytes"] = lane.nvml_peak
                    result.setdefault("metrics", {})["peak_nvml_bytes_per_gpu"] = lane.gpu_peaks
                r._against_reference(lane.run, lane.run_id, cell, result)
                r._finish_cell(self.writer, lane.run_id, index, cell, "done", result)
                lane.open = False

    def _slot(self, lane: Lane, index: int, cell: Cell, slot: dict[str, Any], warmup: int) -> None:
        r, spec = self.r, self.spec
        if lane.client is None and r._kind == "ray" and not self._room_for(lane):
            lane.status, lane.resume, lane.open = "deferred", index, False  # the others hold every node it fits
            return
        if lane.client is None:  # its worker died in an earlier cell: a fresh one resumes
            lane.client, err = self._load(lane)
            if lane.client is None and "no Ray node offered" in err:
                lane.status, lane.resume, lane.open = "deferred", index, False
                return
            if lane.client is None:
                lane.status, lane.error, lane.open = "failed", err, False
                return
        r._local_run = lane.run_id
        if not lane.client.remote:
            self.sampler.watch(lane.client.proc.pid)
        timing = {"warmup": warmup, "iters": spec.timing.iters, "repeats": 1}
        lane.client.send(r._cell_command(index, cell, timing, slot))
        out = r._wait(lane.client, self.writer, lambda e, i=index: isinstance(e, ev.CellFinished) and e.index == i,
                      spec.cell_timeout_s)  # fmt: skip
        lane.nvml_peak = max(lane.nvml_peak, r._cell_nvml_peak.get(lane.run_id, 0))
        for key, v in r._cell_gpu_peaks.get(lane.run_id, {}).items():
            lane.gpu_peaks[key] = max(lane.gpu_peaks.get(key, 0), v)
        if isinstance(out, ev.CellFinished) and out.status == "done":
            lane.parts.append(dict(out.result))
            return
        if isinstance(out, ev.CellFinished):  # oom or failed: the cell's earlier slots count for nothing
            r._finish_cell(self.writer, lane.run_id, index, cell, out.status, dict(out.result), out.error)
            if out.status == "oom":
                lane.ooms.append(cell)
        else:
            if out is None:
                lane.client.kill()
                why = f"cell timed out after {spec.cell_timeout_s:g} s; worker killed"
            else:
                why = out.cause()
            status = r._death_status(out)
            r._finish_cell(self.writer, lane.run_id, index, cell, status, error=why)
            if status == "oom":
                lane.ooms.append(cell)
            lane.client.close()
            lane.client = None
        lane.open = False

    def _room_for(self, lane: Lane) -> bool:
        import ray

        from engines.harness.ray_executor import resources
        from engines.study.executor import ray_cpus

        return _room(resources(lane.run, self.device, ray_cpus(self.spec.executor)), ray.available_resources())

    def _resume_deferred(self, lanes: list[Lane], cells: list[Cell]) -> None:
        """Runs that lost their node finish their grid once the others have let go of theirs."""
        deferred = [lane for lane in lanes if lane.status == "deferred"]
        if not deferred:
            return
        for lane in lanes:
            if lane.client:
                lane.client.close()
                lane.client = None
        self.r._interleaving = False
        for lane in deferred:
            note = (f"schedule: lost its worker and no Ray node had room while the other runs held theirs; cells "
                    f"from {cells[lane.resume].label()} on ran after them, not interleaved")  # fmt: skip
            self.writer.add_note(lane.run_id, note)
            self.r.emit(ev.Log(lane.run_id, time.time(), level="warning", message=note))
            lane.status = "resumed"
            self.r._run_one(lane.run, self.device, self.host, self.writer, self.sampler, self.result.group_id,
                            run_id=lane.run_id, start=lane.resume or 0, ooms=lane.ooms)  # fmt: skip

    def _cancel(self, lanes: list[Lane], cells: list[Cell]) -> None:
        for lane in lanes:
            if lane.client:
                lane.client.kill()
            if lane.status in ("done", "deferred"):
                lane.status = "cancelled"
        for lane in lanes:
            if lane.open:
                self.r._finish_cell(self.writer, lane.run_id, lane.index, cells[lane.index], "cancelled",
                                    error="cancelled by user")  # fmt: skip
                lane.open = False


_RAY_KEY = {"num_cpus": "CPU", "num_gpus": "GPU"}  # actor options -> Ray's resource names


def _room(want: dict[str, float], free: dict[str, float]) -> bool:
    return all(n <= free.get(_RAY_KEY[k], 0.0) for k, n in want.items() if n)


def _first(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "no reason given"
