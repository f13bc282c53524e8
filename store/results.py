"""One result schema behind every view and exporter: a run with its cells and telemetry as plain dicts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from store import queries
from store.models import Run

CELL_AXES = ("batch", "input_len", "output_len")
CONFIG_KEYS = ("engine", "precision", "attention", "quant", "tp")


@dataclass
class RunResult:
    run: dict[str, Any]
    cells: list[dict[str, Any]]
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.run["id"]

    @property
    def short_id(self) -> str:
        return self.run["id"][:8]

    @property
    def status(self) -> str:
        return self.run["status"]

    def config_value(self, key: str) -> Any:
        cfg = self.run.get("config") or {}
        if key in CONFIG_KEYS:
            return cfg.get(key, 1) if key == "tp" else cfg.get(key)  # runs stored before --tp ran on one device
        return (cfg.get("options") or {}).get(key)

    def cell_key(self, cell: dict[str, Any]) -> tuple:
        params = ((k, math.inf if v == "inf" else v) for k, v in (cell.get("params") or {}).items())  # unpaced: "inf"
        return (cell["batch"], cell["input_len"], cell["output_len"], tuple(sorted(params)))

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.cells:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
        return counts


def _row(obj: Any) -> dict[str, Any]:
    return obj.model_dump()


def load_result(run: Run, *, session: Session, telemetry: bool = True) -> RunResult:
    data = _row(run)
    data["status"] = queries.effective_status(run)
    cells = [_row(c) for c in queries.cells_of(run.id, session=session)]
    for c in cells:
        c.pop("id", None)
        c.pop("run_id", None)
    samples = []
    if telemetry:
        samples = [_row(t) for t in queries.telemetry_of(run.id, session=session)]
        for s in samples:
            s.pop("id", None)
            s.pop("run_id", None)
    quality = [_row(q) for q in queries.quality_of(run.id, session=session)]
    for q in quality:
        q.pop("id", None)
        q.pop("run_id", None)
    return RunResult(data, cells, samples, quality)


def load_results(db: Any, refs: list[str], telemetry: bool = False) -> list[RunResult]:
    """The stored runs that `refs` name (ids, prefixes, last, last~N, names), each once, in the order given."""
    with db.session() as s:
        seen, out = set(), []
        for ref in refs:
            run = queries.resolve_run(ref, session=s)
            if run.id not in seen:
                seen.add(run.id)
                out.append(load_result(run, session=s, telemetry=telemetry))
        return out


def varying(values: list[Any]) -> bool:
    return len({repr(v) for v in values}) > 1


def varying_config_keys(results: list[RunResult]) -> list[str]:
    """Which parts of the run configuration differ across `results` (the columns worth showing)."""
    keys = list(CONFIG_KEYS)
    option_keys = sorted({k for r in results for k in ((r.run.get("config") or {}).get("options") or {})})
    keys += option_keys
    shown = [k for k in keys if varying([r.config_value(k) for r in results])]
    if varying([r.run["model"] for r in results]):
        shown.insert(0, "model")
    if varying([r.run.get("device") for r in results]):
        shown.append("device")
    return shown


def run_title(result: RunResult, keys: list[str] | None = None) -> str:
    if keys is None:
        return result.run.get("name") or result.run["label"]
    parts = []
    for k in keys:
        v = result.run[k] if k in ("model", "device") else result.config_value(k)
        if v is not None:
            parts.append(f"tp={v}" if k == "tp" else str(v) if k in CONFIG_KEYS or k in ("model", "device") else f"{k}={v}")
    return " ".join(parts) or result.run["label"]
