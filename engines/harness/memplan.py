"""Every cell's predicted peak memory before it runs (engines.models.memory), against this device's capacity.

The runner stores it with each cell (metrics["memory"]) and, under --skip-predicted-oom, skips the cells
predicted not to fit; `run --dry-run` and the Setup screen show the same plan. Torch-free: NVML and psutil
only, so the dashboard may call it.

Capacity is the device's total memory (NVML's total on cuda:N, RAM on the CPU), times the run's tensor-parallel
size. --cell-mem-limit caps the address space a worker may add once it has loaded (RLIMIT_AS in
engines/harness/worker.py), so under it a cell has the load's share (weights + constant) plus the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engines import registry
from engines.models import memory
from engines.study.grid import Cell
from engines.study.schema import EngineRun, StudySpec

GIB = 2**30


def device_total(device: str) -> int | None:
    """Total memory of `device`: NVML's on a GPU, RAM on the CPU; None if unknown (the plan says so)."""
    from engines.models.footprint import device_memory

    mem = device_memory(device)
    return mem[0] if mem else None


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def oom_reason(entry: dict[str, Any]) -> str:
    """The skipped cell's one line: what was predicted against what there is."""
    need = gib(entry["predicted_bytes"])
    if entry.get("basis") == "gpu" and entry.get("largest_block"):
        need += f" + a {gib(entry['largest_block'])} block"
    return f"predicted OOM: {need} > {gib(entry['capacity_bytes'])} (--skip-predicted-oom)"


def fits_alone(entry: dict[str, Any]) -> bool:
    """A predicted-OOM cell that would fit if the interleaved runs beside it were not holding memory."""
    beside = entry.get("held_beside_bytes") or 0
    if not beside or entry.get("fits") is not False or entry.get("capacity_bytes") is None:
        return False
    need = entry["predicted_bytes"] + (entry.get("largest_block") or 0 if entry.get("basis") == "gpu" else 0)
    return need <= entry["capacity_bytes"] + beside


@dataclass
class RunMemory:
    """One run's predictions, cell by cell in grid order (llama.cpp's context depends on the cells before)."""

    model: str
    run: EngineRun
    device: str
    cells: list[Cell]
    total: int | None  # the device's memory, None where unknown
    limit: int | None  # --cell-mem-limit
    fitted: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    # Interleaved runs loaded beside this one on the same device: a worker's caching allocator keeps what its
    # last cell reserved, so while this run measures cell i the others hold about their own peak of cell i.
    beside: list["RunMemory"] = field(default_factory=list)
    _entries: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    _peaks: dict[int, Any] = field(default_factory=dict)

    def alone(self) -> None:
        """The study fell back to one run at a time: the others no longer hold memory beside this one."""
        self.beside = []
        self._entries.clear()

    def entry(self, index: int) -> dict[str, Any] | None:
        """metrics["memory"] of cell `index`: the prediction, capacity_bytes, fits, constant_source; None where
        the model cannot be sized here (a URL, an unknown directory, a bare GGUF)."""
        if index not in self._entries:
            self._entries[index] = self._predict(index)
        return self._entries[index]

    def loaded(self, index: int) -> int:
        """The loaded model: weights and the per-engine constant."""
        pred = self._prediction(index)
        return pred.weights + pred.constant if pred is not None else 0

    def held(self, index: int) -> int:
        """What this run's worker holds while another interleaved run measures cell `index`: on a GPU the caching
        allocator keeps its peak of that cell (unless the cell ran out of memory: the worker then empties the
        cache); on the CPU large blocks go back to the system, so only the loaded model stays."""
        pred = self._prediction(index)
        if pred is None:
            return 0
        loaded = self.loaded(index)
        if pred.basis != "gpu":
            return loaded
        alone = self.total * max(1, int(self.run.tp or 1)) if self.total is not None else None
        return pred.total if pred.fits(alone) is not False else loaded

    def _predict(self, index: int) -> dict[str, Any] | None:
        pred = self._prediction(index)
        if pred is None:
            return None
        fit = self.fitted.get((self.run.engine, pred.basis))
        source = f"fitted ({fit[1]} cells)" if fit else "default"
        size = max(1, int(self.run.tp or 1))
        total = self.total * size if self.total is not None else None
        capacity = total
        if capacity is not None and self.beside:
            capacity = max(0, capacity - sum(other.held(index) for other in self.beside))
        if self.limit is not None:
            loaded = pred.weights + pred.constant
            capacity = loaded + self.limit if capacity is None else min(capacity, loaded + self.limit)
        out = {**pred.to_dict(), "capacity_bytes": capacity, "fits": pred.fits(capacity), "constant_source": source}
        if self.beside:
            out["held_beside_bytes"] = sum(other.held(index) for other in self.beside)
        return out

    def _prediction(self, index: int) -> Any:
        if index not in self._peaks:
            self._peaks[index] = self._compute(index)
        return self._peaks[index]

    def _compute(self, index: int) -> Any:
        info = registry.ENGINES.get(self.run.engine)
        if info is None:
            return None
        basis = memory.basis_of(self.device)
        size = max(1, int(self.run.tp or 1))
        fit = self.fitted.get((self.run.engine, basis))
        constant = fit[0] if fit else None
        if constant is None and size > 1:  # one worker process (interpreter, libraries) per rank
            constant = memory.default_constant(self.run.engine, basis) * size
        total = self.total * size if self.total is not None else None
        cell = self.cells[index]
        positions = memory.llama_positions(self.cells[: index + 1], self.run.options) if info.reads_gguf else None
        try:
            return memory.predict(self.model, self.run, cell, info, self.device, constant, total, positions)
        except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError):  # a model config we cannot read
            return None

    def entries(self) -> list[dict[str, Any] | None]:
        return [self.entry(i) for i in range(len(self.cells))]


def host_fits(db: Any, host: dict[str, Any], device: str) -> dict[tuple[str, str], tuple[int, int]]:
    """Constants fitted from this host's stored done cells; none where there is no database to read."""
    if db is None:
        return {}
    from store.memfit import fitted
    from store.noise import host_key

    try:
        return fitted(db, host_key(host, device))
    except Exception:  # an old or damaged file must not stop a run: the defaults stand
        return {}


def plan(spec: StudySpec, device: str, fits: dict[tuple[str, str], tuple[int, int]] | None = None,
         known_capacity: bool = True) -> list[RunMemory]:  # fmt: skip
    """Per run of `spec`, its predictions on `device` (a resolved one: cpu, cuda, cuda:N); `known_capacity`
    False where the runs execute elsewhere (a Ray node): predicted, but fits stays None."""
    cells = spec.cells()
    total = device_total(device) if known_capacity else None
    runs = [RunMemory(spec.model, run, device, cells, total, spec.cell_mem_limit_bytes, dict(fits or {}))
            for run in spec.runs]  # fmt: skip
    if spec.schedule == "interleaved" and known_capacity:
        share_device(runs)
    return runs


def share_device(runs: list[RunMemory]) -> None:
    """Interleaved runs stay loaded side by side: each cell's capacity leaves room for what the others hold. Not
    where their loaded models alone exceed the device: the runner then falls back to one run at a time
    (engines.harness.interleave.fits)."""
    if len(runs) < 2 or runs[0].total is None or not runs[0].cells:
        return
    if sum(rm.loaded(0) for rm in runs) <= runs[0].total:
        for rm in runs:
            rm.beside = [other for other in runs if other is not rm]


@dataclass
class Summary:
    cells: int  # cells with a prediction
    over: list[tuple[str, str, int, int | None]]  # (run label, cell label, predicted, capacity) not fitting
    peak: int | None  # the largest predicted peak
    capacity: int | None  # the capacity of the cell with that peak


def summarise(runs: list[RunMemory]) -> Summary:
    over, peak, capacity, n = [], None, None, 0
    for rm in runs:
        for cell, e in zip(rm.cells, rm.entries()):
            if e is None:
                continue
            n += 1
            if peak is None or e["predicted_bytes"] > peak:
                peak, capacity = e["predicted_bytes"], e["capacity_bytes"]
            if e["fits"] is False:
                over.append((rm.run.label(), cell.label(), e["predicted_bytes"], e["capacity_bytes"]))
    return Summary(n, over, peak, capacity)
