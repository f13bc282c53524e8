"""Predicted peak memory for stored cells, where the store has none: runs stored before the runner wrote
metrics["memory"] get it computed here from the run's stored configuration (engines.models.memory), with the
per-engine constant fitted from the same host's stored runs (store.memfit) where there are some. Torch-free:
the dashboard, `memory` and the exports use it. Nothing here writes to the database."""

from __future__ import annotations

import dataclasses
from typing import Any

from store.memfit import _bytes, fitted, memory_of
from store.noise import host_key
from store.results import RunResult


def run_capacity(run: dict[str, Any]) -> int | None:
    """The run's card (cuda, cuda:N) or host memory (cpu), as the stored host fingerprint gives it."""
    host, device = run.get("host"), run.get("device")
    if not isinstance(host, dict) or not isinstance(device, str):
        return None
    if not device.startswith("cuda"):
        return _bytes(host.get("mem_total"))
    index = device.partition(":")[2]
    gpus = [g for g in host.get("gpus") or [] if isinstance(g, dict)]
    wanted = int(index) if index.isdecimal() and index.isascii() else 0
    for g in gpus:
        if g.get("index") == wanted:
            return _bytes(g.get("mem_total"))
    return _bytes(gpus[0].get("mem_total")) if gpus else None


class Constants:
    """The constant each (engine, basis) is predicted with on a host: fitted from its stored runs, else the
    model's default. Fits are read once per host."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._fits: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}

    def of(self, run: dict[str, Any], engine: str, basis: str) -> tuple[int, str]:
        """(bytes, where from: "fitted from N cells" or "default")."""
        from engines.models.memory import default_constant

        key = host_key(run.get("host"), run.get("device"))
        if key not in self._fits:
            self._fits[key] = fitted(self.db, key)
        if (engine, basis) in self._fits[key]:
            value, n = self._fits[key][(engine, basis)]
            return value, f"fitted from {n} cell(s)"
        return default_constant(engine, basis), "default"


def predict_cell(run: dict[str, Any], cell: dict[str, Any], constants: Constants | None, capacity: int | None):
    """engines.models.memory.Prediction for a stored cell, or None where the stored run cannot be sized (an
    unknown engine or model, a configuration this version refuses, tensor parallelism: the model sizes one
    device holding the whole model)."""
    from engines import registry
    from engines.models.memory import basis_of, predict
    from engines.study.grid import Cell
    from engines.study.schema import EngineRun

    device, model = run.get("device"), run.get("model")
    if not isinstance(device, str) or not isinstance(model, str):
        return None
    try:
        cfg = EngineRun.model_validate(run.get("config") or {})
        if cfg.tp > 1:
            return None
        params = cell.get("params") or {}
        extra = tuple(sorted((str(k), int(v)) for k, v in params.items())) if isinstance(params, dict) else ()
        grid_cell = Cell(int(cell["batch"]), int(cell["input_len"]), int(cell["output_len"]), extra)
        info = registry.get(cfg.engine)
        constant = constants.of(run, cfg.engine, basis_of(device))[0] if constants else None
        return predict(model, cfg, grid_cell, info, device, constant=constant, capacity=capacity)
    except Exception:  # stored data may come from an import or an older version: no prediction, never a crash
        return None


def with_predictions(db: Any, results: list[RunResult]) -> list[RunResult]:
    """Copies of `results` whose cells without a stored prediction carry a computed one, in the runner's shape
    (Prediction.to_dict + capacity_bytes, fits, constant_source). Stored predictions stay as they are."""
    constants = Constants(db)
    out = []
    for r in results:
        capacity = run_capacity(r.run)
        cells = []
        for c in r.cells:
            if memory_of(c.get("metrics")) is None:
                p = predict_cell(r.run, c, constants, capacity)
                if p is not None:
                    source = constants.of(r.run, r.run.get("config", {}).get("engine") or "", p.basis)[1]
                    mem = {**p.to_dict(), "capacity_bytes": capacity, "fits": p.fits(capacity),
                           "constant_source": source}  # fmt: skip
                    metrics = c.get("metrics") if isinstance(c.get("metrics"), dict) else {}
                    c = {**c, "metrics": {**metrics, "memory": mem}}
            cells.append(c)
        out.append(dataclasses.replace(r, cells=cells))
    return out


def for_export(db: Any, results: list[RunResult], fmt: str) -> list[RunResult]:
    """The Markdown and HTML exports draw each run's memory boundary, so they get predictions for cells stored
    without one; CSV and JSON stay exactly what is stored (a JSON export must import back as it was)."""
    return with_predictions(db, results) if fmt in ("md", "html") else results
