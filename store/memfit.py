"""Predicted against measured peak memory of stored cells, and the per-engine constants fitted from them.

Every cell the runner could size carries metrics["memory"] (engines.models.memory.Prediction.to_dict() plus
capacity_bytes and fits). The model's terms (weights, KV, activations, workspace) are computed; what they
leave out (interpreter, libraries, allocator slack) is one constant per engine and basis. Here that constant
is refitted from done cells: measured - (predicted - the constant the prediction used), median over cells, so
one odd cell cannot move it.

What "measured" is follows the prediction's basis: "gpu" is the torch allocator's peak (NVML's device memory
where the engine has no allocator figure, as store.metrics.peak_mem), "rss" the worker's peak resident memory.
A CPU run on a GPU host must not be compared with the GPU's figures, hence not peak_mem itself.

Stored data may come from an import: a value of the wrong type (a string, a bool, NaN, a negative number)
counts as absent, never as an error (store.payload.TPShares.read does the same).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from sqlmodel import col, select

from store.models import CellRow, Run
from store.noise import host_key

BASES = ("gpu", "rss")


def _bytes(value: Any) -> int | None:
    """A non-negative byte count, else None: ints (not bools), or finite whole-valued floats (JSON imports)."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


def memory_of(metrics: Any) -> dict[str, Any] | None:
    """The stored prediction of a cell, or None (none stored, or not a mapping)."""
    mem = metrics.get("memory") if isinstance(metrics, dict) else None
    return mem if isinstance(mem, dict) else None


def basis_of(mem: dict[str, Any] | None, device: Any) -> str:
    """The stored basis where it is one we know, else the run's device kind."""
    basis = mem.get("basis") if mem else None
    if basis in BASES:
        return basis
    return "gpu" if isinstance(device, str) and device.startswith("cuda") else "rss"


def measured(cell: CellRow, basis: str) -> int | None:
    """The measured counterpart of a prediction of this basis; 0 counts as not measured. On the CPU an engine
    that runs its model in processes of its own (vLLM's engine core) reports their peak beside the worker's
    (metrics.last_extra.vllm_procs_peak_rss_bytes): the weights and the KV pool are there, so it counts."""
    keys = ("peak_gpu_bytes", "peak_nvml_bytes") if basis == "gpu" else ("peak_rss_bytes",)
    for key in keys:
        value = _bytes(getattr(cell, key, None))
        if value:
            if basis == "rss":
                extra = cell.metrics.get("last_extra") if isinstance(cell.metrics, dict) else None
                procs = _bytes(extra.get("vllm_procs_peak_rss_bytes")) if isinstance(extra, dict) else None
                value += procs or 0
            return value
    return None


def _rows(db: Any, run_ids: list[str] | None = None) -> list[tuple[Run, CellRow]]:
    with db.session() as s:
        query = select(Run, CellRow).where(CellRow.run_id == Run.id)
        if run_ids is not None:
            query = query.where(col(Run.id).in_(list(run_ids)))
        return list(s.exec(query.order_by(col(Run.created_at), col(CellRow.run_id), col(CellRow.idx))))


def fitted(db: Any, host: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """Per (engine, basis): (fitted constant in bytes, number of done cells it is the median of).
    `host`: a store.noise.host_key; only runs of that host and device kind count."""
    samples: dict[tuple[str, str], list[int]] = {}
    for run, cell in _rows(db):
        if cell.status != "done" or (host is not None and host_key(run.host, run.device) != host):
            continue
        mem = memory_of(cell.metrics)
        if mem is None:
            continue
        predicted, constant = _bytes(mem.get("predicted_bytes")), _bytes(mem.get("constant"))
        basis = basis_of(mem, run.device)
        peak = measured(cell, basis)
        if predicted is None or constant is None or peak is None or constant > predicted:
            continue
        if not isinstance(run.engine, str):
            continue
        # The constant is what the computed terms leave out; it cannot be negative (RSS below the weights
        # means the weights were mapped and not yet touched, not that the process holds less than nothing).
        samples.setdefault((run.engine, basis), []).append(max(0, peak - (predicted - constant)))
    return {key: (int(statistics.median(values)), len(values)) for key, values in samples.items()}


def fitted_constants(db: Any, host: str | None = None) -> dict[tuple[str, str], int]:
    """Per (engine, basis), the median over stored done cells of measured - (predicted - stored constant)."""
    return {key: value for key, (value, _) in fitted(db, host).items()}


def error_rows(db: Any, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Per stored cell (of `run_ids`, else all), oldest run first: the prediction against the measurement.
    predicted_bytes is None for a cell stored without a prediction; error (measured / predicted - 1) only for
    done cells, since an OOM or crashed cell's peak is where it stopped, not what it needed."""
    out = []
    for run, cell in _rows(db, run_ids):
        mem = memory_of(cell.metrics)
        basis = basis_of(mem, run.device)
        predicted = _bytes(mem.get("predicted_bytes")) if mem else None
        peak = measured(cell, basis)
        error = peak / predicted - 1 if cell.status == "done" and peak and predicted else None
        out.append({
            "run_id": run.id, "engine": run.engine, "label": run.label, "basis": basis,
            "batch": cell.batch, "input_len": cell.input_len, "output_len": cell.output_len, "status": cell.status,
            "predicted_bytes": predicted, "measured_bytes": peak, "error": error,
            "fits": mem.get("fits") if mem and isinstance(mem.get("fits"), bool) else None,
            "capacity_bytes": _bytes(mem.get("capacity_bytes")) if mem else None,
        })  # fmt: skip
    return out
