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
    """Total memory of `device`: NVML's on a GPU (no torch, no CUDA context), RAM on the CPU; None if unknown."""
    if device.startswith("cuda"):
        try:
            import pynvml

            pynvml.nvmlInit()
            index = int(device.split(":")[1]) if ":" in device else 0
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).total)
        except Exception:  # no driver, no such GPU: the plan says "capacity unknown"
            return None
    import psutil

    return int(psutil.virtual_memory().total)


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def oom_reason(entry: dict[str, Any]) -> str:
    """The skipped cell's one line: what was predicted against what there is."""
    need = gib(entry["predicted_bytes"])
    if entry.get("basis") == "gpu" and entry.get("largest_block"):
        need += f" + a {gib(entry['largest_block'])} block"
    return f"predicted OOM: {need} > {gib(entry['capacity_bytes'])} (--skip-predicted-oom)"


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
    _entries: dict[int, dict[str, Any] | None] = field(default_factory=dict)

    def entry(self, index: int) -> dict[str, Any] | None:
        """metrics["memory"] of cell `index`: the prediction, capacity_bytes, fits, constant_source; None where
        the model cannot be sized here (a URL, an unknown directory, a bare GGUF)."""
        if index not in self._entries:
            self._entries[index] = self._predict(index)
        return self._entries[index]

    def _predict(self, index: int) -> dict[str, Any] | None:
        info = registry.ENGINES.get(self.run.engine)
        if info is None:
            return None
        basis = memory.basis_of(self.device)
        size = max(1, int(self.run.tp or 1))
        fit = self.fitted.get((self.run.engine, basis))
        constant, source = (fit[0], f"fitted ({fit[1]} cells)") if fit else (None, "default")
        if constant is None and size > 1:  # one worker process (interpreter, libraries) per rank
            constant = memory.default_constant(self.run.engine, basis) * size
        total = self.total * size if self.total is not None else None
        cell = self.cells[index]
        positions = memory.llama_positions(self.cells[: index + 1], self.run.options) if info.reads_gguf else None
        try:
            pred = memory.predict(self.model, self.run, cell, info, self.device, constant, total, positions)
        except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError):  # a model config we cannot read
            return None
        if pred is None:
            return None
        capacity = total
        if self.limit is not None:
            loaded = pred.weights + pred.constant
            capacity = loaded + self.limit if total is None else min(total, loaded + self.limit)
        return {**pred.to_dict(), "capacity_bytes": capacity, "fits": pred.fits(capacity), "constant_source": source}

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
    return [RunMemory(spec.model, run, device, cells, total, spec.cell_mem_limit_bytes, dict(fits or {}))
            for run in spec.runs]  # fmt: skip


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
