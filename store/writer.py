"""The one writer: buffers rows and commits them in one transaction per event batch."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import psutil
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlmodel import Session

from store import queries
from store.db import Database, failure
from store.flags import cell_flags
from store.metrics import summarise
from store.models import CellRow, Quality, Run, Telemetry
from store.payload import CellResult


class RunWriter:
    def __init__(self, db: Database):
        db.writable()
        self.db = db
        # No autoflush: every write reaches the disk in commit(), where a full disk or a lock becomes one line.
        self.session = Session(db.engine, expire_on_commit=False, autoflush=False)
        me = psutil.Process(os.getpid())
        self.owner = (socket.gethostname(), me.pid, me.create_time())

    def begin_group(self, spec: dict[str, Any], name: str | None) -> str:
        try:
            group = queries.create_group(spec, name, session=self.session)  # flushes: the run rows need it
        except (OperationalError, DatabaseError) as exc:
            self.session.rollback()
            raise failure(self.db.path, exc) from None
        self.commit()
        return group.id

    def begin_run(self, *, group_id: str, model: str, engine: str, label: str, config: dict, spec: dict,
                  host: dict, cells_total: int, name: str | None) -> str:  # fmt: skip
        run = queries.create_run(
            session=self.session, group_id=group_id, model=model, engine=engine, label=label, config=config,
            spec=spec, host=host, cells_total=cells_total, name=name, owner=self.owner,
        )  # fmt: skip
        self.commit()
        return run.id

    def set_runtime(self, run_id: str, runtime: dict[str, Any], device: str) -> None:
        run = self.session.get(Run, run_id)
        run.runtime = {**(run.runtime or {}), **runtime}
        run.device = device
        self.session.add(run)

    def update_runtime(self, run_id: str, values: dict[str, Any]) -> None:
        run = self.session.get(Run, run_id)
        run.runtime = {**(run.runtime or {}), **values}
        self.session.add(run)
        self.commit()

    def add_note(self, run_id: str, note: str) -> None:
        """A decision of the runner that changes how the run's figures read (kept with the run, shown with it)."""
        run = self.session.get(Run, run_id)
        run.notes = [*(run.notes or []), note]
        self.session.add(run)
        self.commit()

    def set_host(self, run_id: str, host: dict[str, Any]) -> None:
        """The machine a remote run ran on; a run resumed on another node keeps every node it used."""
        run = self.session.get(Run, run_id)
        old = run.host or {}
        if old.get("ray") and old.get("ray") != host.get("ray"):
            host = {**host, "earlier_nodes": [*old.get("earlier_nodes", []), old["ray"]]}
        run.host = host
        self.session.add(run)
        self.commit()

    def add_cell(self, run_id: str, index: int, cell: Any, status: str, *, result: CellResult | None = None,
                 error: str = "", finished_at: float | None = None) -> CellRow:  # fmt: skip
        result = result or {}
        repeats = result.get("repeats") or []
        summary = summarise(repeats, cell.batch, cell.output_len) if status == "done" else {}
        flags = cell_flags(repeats, result.get("metrics")) if status == "done" else []
        row = CellRow(
            run_id=run_id, idx=index, batch=cell.batch, input_len=cell.input_len, output_len=cell.output_len,
            params=cell.params(), status=status, error=error, repeats=repeats,
            peak_rss_bytes=result.get("peak_rss_bytes"), peak_gpu_bytes=result.get("peak_gpu_bytes"),
            peak_nvml_bytes=result.get("peak_nvml_bytes"), metrics=result.get("metrics") or {},
            started_at=result.get("started_at"), finished_at=finished_at or time.time(), flags=flags, **summary,
        )  # fmt: skip
        self.session.add(row)
        return row

    def add_telemetry(self, run_id: str, t: float, cpu: float, rss: int, gpus: list) -> None:
        self.session.add(Telemetry(run_id=run_id, t=t, cpu_percent=cpu, rss_bytes=rss, gpus=gpus))

    def add_quality(self, run_id: str, metric: str, value: float | None, details: dict[str, Any]) -> None:
        self.session.add(Quality(run_id=run_id, metric=metric, value=value, details=details, created_at=time.time()))
        self.commit()

    def finish_run(self, run_id: str, status: str, error: str = "") -> None:
        run = self.session.get(Run, run_id)
        run.status = status
        run.error = error
        run.finished_at = time.time()
        self.session.add(run)
        self.commit()

    def commit(self) -> None:
        try:
            self.session.commit()
        except (OperationalError, DatabaseError) as exc:
            self.session.rollback()
            raise failure(self.db.path, exc) from None

    def close(self) -> None:
        self.session.close()
