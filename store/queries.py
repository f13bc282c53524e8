"""Reading and writing runs. Plain functions with a keyword-only session."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any, Iterable

from sqlmodel import Session, col, delete, func, select

from store.models import CellRow, Quality, Run, RunGroup, Telemetry


class RunNotFound(LookupError):
    pass


def new_id() -> str:
    return uuid.uuid4().hex


def _process_alive(pid: int, started: float) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 1.0
    except Exception:
        return False


def effective_status(run: Run) -> str:
    """`running` rows whose writer process is gone are shown as `interrupted`."""
    if run.status != "running":
        return run.status
    if run.owner_host == socket.gethostname() and not _process_alive(run.owner_pid, run.owner_started):
        return "interrupted"
    return run.status


def list_runs(*, session: Session, limit: int | None = None, offset: int = 0) -> list[Run]:
    stmt = select(Run).order_by(col(Run.created_at).desc(), col(Run.id)).offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt))


def count_runs(*, session: Session) -> int:
    return session.exec(select(func.count()).select_from(Run)).one()


def resolve_run(ref: str, *, session: Session) -> Run:
    """A run id, a unique id prefix, `last`, or `last~N` (N runs before the newest)."""
    ref = ref.strip()
    if ref == "last" or ref.startswith("last~"):
        back = 0
        if ref != "last":
            tail = ref[5:]
            if not tail.isdigit():
                raise RunNotFound(f"'{ref}' is not a run reference (use last, last~1, an id or an id prefix)")
            back = int(tail)
        runs = list_runs(session=session, limit=1, offset=back)
        if not runs:
            raise RunNotFound("no runs stored yet; start one with `codebench-tui run`")
        return runs[0]
    if not ref or not all(c in "0123456789abcdef" for c in ref.lower()):
        raise RunNotFound(f"'{ref}' is not a run id (ids are hex; `codebench-tui runs` lists them)")
    matches = list(session.exec(select(Run).where(col(Run.id).startswith(ref.lower())).limit(2)))
    if not matches:
        raise RunNotFound(f"no run with id '{ref}' (`codebench-tui runs` lists them)")
    if len(matches) > 1:
        raise RunNotFound(f"run id prefix '{ref}' is ambiguous; type more characters")
    return matches[0]


def cells_of(run_id: str, *, session: Session) -> list[CellRow]:
    return list(session.exec(select(CellRow).where(CellRow.run_id == run_id).order_by(col(CellRow.idx))))


def telemetry_of(run_id: str, *, session: Session) -> list[Telemetry]:
    return list(session.exec(select(Telemetry).where(Telemetry.run_id == run_id).order_by(col(Telemetry.t))))


def quality_of(run_id: str, *, session: Session) -> list[Quality]:
    return list(session.exec(select(Quality).where(Quality.run_id == run_id).order_by(col(Quality.id))))


def runs_in_group(group_id: str, *, session: Session) -> list[Run]:
    return list(session.exec(select(Run).where(Run.group_id == group_id).order_by(col(Run.created_at))))


# --- writing -----------------------------------------------------------------------------


def create_group(spec: dict[str, Any], name: str | None, *, session: Session) -> RunGroup:
    group = RunGroup(id=new_id(), name=name, created_at=time.time(), spec=spec)
    session.add(group)
    session.flush()  # no ORM relationship orders the inserts: the group row must exist first
    return group


def create_run(
    *,
    session: Session,
    group_id: str,
    model: str,
    engine: str,
    label: str,
    config: dict[str, Any],
    spec: dict[str, Any],
    host: dict[str, Any],
    cells_total: int,
    name: str | None = None,
    owner: tuple[str, int, float] | None = None,
) -> Run:
    owner_host, owner_pid, owner_started = owner or ("", 0, 0.0)
    run = Run(
        id=new_id(),
        group_id=group_id,
        name=name,
        model=model,
        engine=engine,
        label=label,
        config=config,
        spec=spec,
        host=host,
        cells_total=cells_total,
        created_at=time.time(),
        owner_host=owner_host,
        owner_pid=owner_pid,
        owner_started=owner_started,
    )
    session.add(run)
    return run


def rename_run(run_id: str, name: str | None, *, session: Session) -> None:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(f"no run with id '{run_id}'")
    run.name = name
    session.add(run)


def delete_runs(run_ids: Iterable[str], *, session: Session) -> int:
    ids = list(run_ids)
    if not ids:
        return 0
    running = [r.id[:8] for r in session.exec(select(Run).where(col(Run.id).in_(ids))) if effective_status(r) == "running"]
    if running:  # its study still writes cells for it
        from store.db import StoreError

        raise StoreError(f"run {running[0]} is still running; cancel its study (x on Live) before deleting it")
    session.exec(delete(CellRow).where(col(CellRow.run_id).in_(ids)))
    session.exec(delete(Telemetry).where(col(Telemetry.run_id).in_(ids)))
    session.exec(delete(Quality).where(col(Quality.run_id).in_(ids)))
    groups = {r.group_id for r in session.exec(select(Run).where(col(Run.id).in_(ids)))}
    n = session.exec(delete(Run).where(col(Run.id).in_(ids))).rowcount
    for gid in groups:
        if session.exec(select(Run).where(Run.group_id == gid).limit(1)).first() is None:
            session.exec(delete(RunGroup).where(RunGroup.id == gid))
    return n
