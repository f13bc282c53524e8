"""Aggregate queries for the dashboard: one SQL statement per page of runs, never every cell of every run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from store.models import Run
from store.queries import effective_status

# Sort keys -> SQL expressions (whitelisted: never interpolate user text).
SORTS = {
    "started": "r.created_at",
    "name": "lower(coalesce(r.name, ''))",
    "model": "lower(r.model)",
    "run": "lower(r.label)",
    "status": "r.status",
    "cells": "coalesce(a.done, 0)",
    "best": "coalesce(a.best, -1)",
    "host": "lower(coalesce(json_extract(r.host, '$.hostname'), ''))",
}
_HAY = ("lower(r.id || ' ' || coalesce(r.name, '') || ' ' || r.model || ' ' || r.label || ' ' || r.status || ' ' "
        "|| coalesce(json_extract(r.host, '$.hostname'), '') || ' ' || r.device)")  # fmt: skip


@dataclass
class RunSummary:
    id: str
    name: str | None
    model: str
    engine: str
    label: str
    status: str
    created_at: float
    finished_at: float | None
    cells_total: int
    done: int
    bad: dict[str, int]  # non-done cell statuses and their counts
    best_tps: float | None
    host: str
    device: str


def _where(filter_text: str) -> tuple[str, dict[str, Any]]:
    words = filter_text.lower().split()
    clauses, params = [], {}
    for i, w in enumerate(words[:8]):
        clauses.append(f"{_HAY} like :w{i} escape '\\'")
        params[f"w{i}"] = "%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return (" where " + " and ".join(clauses)) if clauses else "", params


def count_matching(filter_text: str = "", *, session: Session) -> int:
    where, params = _where(filter_text)
    return session.connection().execute(text(f"select count(*) from run r{where}"), params).scalar_one()


_AGG = """select run_id, sum(status = 'done') as done, sum(status = 'oom') as oom, sum(status = 'skipped') as skipped,
                 sum(status = 'crashed') as crashed, sum(status = 'failed') as failed,
                 sum(status = 'cancelled') as cancelled, max(tokens_per_s) as best
          from cell {where} group by run_id"""
_RUN_COLS = ("r.id, r.name, r.model, r.engine, r.label, r.status, r.created_at, r.finished_at, r.cells_total, r.device, "
             "r.owner_host, r.owner_pid, r.owner_started, json_extract(r.host, '$.hostname') as host")  # fmt: skip
_BAD = ("oom", "skipped", "crashed", "failed", "cancelled")


def run_page(filter_text: str = "", sort: str = "started", descending: bool = True, limit: int = 200,
             offset: int = 0, *, session: Session) -> list[RunSummary]:  # fmt: skip
    """One page of runs with per-run cell counts and best tokens/s.

    Sorting by a run column reads one page of runs, then aggregates the cells of those runs only;
    sorting by an aggregate (cells, best) aggregates all cells once, in one grouped query.
    """
    if sort not in SORTS:
        raise ValueError(f"unknown sort '{sort}' (known: {', '.join(SORTS)})")
    where, params = _where(filter_text)
    order = f"{SORTS[sort]} {'desc' if descending else 'asc'}, r.id"
    con = session.connection()
    page = {"limit": limit, "offset": offset}
    if sort in ("cells", "best"):
        sql = (f"select {_RUN_COLS}, a.* from run r left join ({_AGG.format(where='')}) a on a.run_id = r.id"
               f"{where} order by {order} limit :limit offset :offset")  # fmt: skip
        rows = [dict(m) for m in con.execute(text(sql), {**params, **page}).mappings()]
    else:
        sql = f"select {_RUN_COLS} from run r{where} order by {order} limit :limit offset :offset"
        rows = [dict(m) for m in con.execute(text(sql), {**params, **page}).mappings()]
        if rows:
            ids = {f"id{i}": m["id"] for i, m in enumerate(rows)}
            agg_sql = _AGG.format(where=f"where run_id in ({', '.join(':' + k for k in ids)})")
            aggs = {a["run_id"]: a for a in con.execute(text(agg_sql), ids).mappings()}
            for m in rows:
                m.update(aggs.get(m["id"], {}))
    out = []
    for m in rows:
        status = m["status"]
        if status == "running":
            status = effective_status(Run(id=m["id"], group_id="", model="", engine="", label="", created_at=0,
                                          status=status, owner_host=m["owner_host"] or "",
                                          owner_pid=m["owner_pid"] or 0, owner_started=m["owner_started"] or 0.0))  # fmt: skip
        bad = {k: m[k] for k in _BAD if m.get(k)}
        out.append(RunSummary(m["id"], m["name"], m["model"], m["engine"], m["label"], status, m["created_at"],
                              m["finished_at"], m["cells_total"], m.get("done") or 0, bad, m.get("best"),
                              m["host"] or "", m["device"] or ""))  # fmt: skip
    return out


def recent_models(limit: int = 8, *, session: Session) -> list[str]:
    rows = session.connection().execute(
        text("select model from run group by model order by max(created_at) desc limit :n"), {"n": limit}
    )
    return [r[0] for r in rows]


@dataclass
class EngineRate:
    """Past pace of an engine: seconds per generated token-step of a minibatch, and start-up time."""

    engine: str
    s_per_step: float | None
    load_s: float | None
    cells: int


def engine_rates(*, session: Session) -> dict[str, EngineRate]:
    """Seconds per (minibatch x output token) over stored done cells, per engine. One query each."""
    con = session.connection()
    steps = con.execute(text("""
        select r.engine, count(*),
               avg((c.finished_at - c.started_at) / (c.output_len * (
                   coalesce(json_extract(r.spec, '$.timing.warmup'), 1)
                   + coalesce(json_extract(r.spec, '$.timing.iters'), 2)
                     * coalesce(json_extract(r.spec, '$.timing.repeats'), 3))))
        from cell c join run r on r.id = c.run_id
        where c.status = 'done' and c.started_at is not null and c.finished_at > c.started_at
        group by r.engine""")).all()  # fmt: skip
    # Start-up: from the run row to its first cell (worker spawn, imports, load), as the user waits for it.
    loads = dict(con.execute(text("""
        select r.engine, avg(f.first - r.created_at) from run r
        join (select run_id, min(started_at) as first from cell where started_at is not null group by run_id) f
          on f.run_id = r.id
        where f.first > r.created_at group by r.engine""")).all())  # fmt: skip
    out = {e: EngineRate(e, rate, loads.get(e), n) for e, n, rate in steps}
    for e, load in loads.items():
        out.setdefault(e, EngineRate(e, None, load, 0))
    return out
