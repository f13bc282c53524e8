import os
import sqlite3
import subprocess
import sys
import time

import pytest

from engines.study.grid import Cell
from store import queries
from store.db import StoreError, memory_db, open_db
from store.export import import_export, parse_export, render, to_json
from store.models import SCHEMA_VERSION, Run
from store.results import load_result
from store.writer import RunWriter


def _fill(db, n_runs=2, status="done"):
    w = RunWriter(db)
    gid = w.begin_group({"model": "tiny"}, "g")
    ids = []
    for i in range(n_runs):
        rid = w.begin_run(group_id=gid, model="tiny", engine="hf-generate", label=f"hf-generate fp32 v{i}",
                          config={"engine": "hf-generate", "precision": "fp32", "options": {"v": i}},
                          spec={"timing": {"warmup": 1, "iters": 1, "repeats": 2}}, host={"cpu": "x"},
                          cells_total=2, name=None)
        rep = [{"latencies_s": [0.5 * (i + 1)], "ttft_s": [0.1], "tokens": [16]}]
        w.add_cell(rid, 0, Cell(1, 32, 16), "done", result={"repeats": rep, "peak_rss_bytes": 123})
        w.add_cell(rid, 1, Cell(4, 32, 16), "oom", error="OutOfMemoryError")
        w.add_telemetry(rid, time.time(), 50.0, 1000, [])
        w.finish_run(rid, status)
        ids.append(rid)
    w.close()
    return ids


def test_fresh_db_has_schema_version_and_wal(tmp_path):
    db = open_db(tmp_path / "a" / "runs.db")
    _fill(db)
    con = sqlite3.connect(db.path)
    assert con.execute("select value from schema_info where key='version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert con.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_missing_db_is_not_created_for_reading(tmp_path):
    with pytest.raises(StoreError, match="no database"):
        open_db(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize("content", [b"this is not sqlite at all" * 100, b"SQLite format 3\x00" + b"\x00" * 90])
def test_corrupt_file_is_refused_and_untouched(tmp_path, content):
    p = tmp_path / "bad.db"
    p.write_bytes(content)
    with pytest.raises(StoreError):
        open_db(p)
    assert p.read_bytes() == content


def test_foreign_sqlite_and_newer_schema_are_refused_untouched(tmp_path):
    p = tmp_path / "other.db"
    con = sqlite3.connect(p)
    con.execute("create table x (a)")
    con.commit()
    con.close()
    before = p.read_bytes()
    with pytest.raises(StoreError, match="not a codebench database"):
        open_db(p)
    assert p.read_bytes() == before

    q = tmp_path / "newer.db"
    db = open_db(q)
    db.close()
    con = sqlite3.connect(q)
    con.execute("update schema_info set value='99' where key='version'")
    con.commit()
    con.close()
    before = q.read_bytes()
    with pytest.raises(StoreError, match="newer than this codebench-tui"):
        open_db(q)
    assert q.read_bytes() == before


def test_directory_and_unwritable_location(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        open_db(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="writable path"):
        open_db(blocker / "sub" / "runs.db")  # works as root too: the parent is a file


def test_resolve_run_refs():
    db = memory_db()
    ids = _fill(db, 3)
    with db.session() as s:
        assert queries.resolve_run("last", session=s).id == ids[-1]
        assert queries.resolve_run("last~2", session=s).id == ids[0]
        assert queries.resolve_run(ids[1][:10], session=s).id == ids[1]
        with pytest.raises(queries.RunNotFound, match="no run"):
            queries.resolve_run("ffffffffffff", session=s)
        with pytest.raises(queries.RunNotFound, match="not a run id"):
            queries.resolve_run("zz", session=s)
        for suffix in ("1", "2"):
            s.add(Run(id="abcabc" + suffix * 26, group_id=s.get(Run, ids[0]).group_id, model="tiny",
                      engine="hf-generate", label="x", created_at=0.0))
        s.commit()
        with pytest.raises(queries.RunNotFound, match="ambiguous"):
            queries.resolve_run("abcabc", session=s)
        assert queries.resolve_run("abcabc1", session=s).id == "abcabc" + "1" * 26


def test_running_row_of_dead_process_shows_interrupted(tmp_path):
    db = open_db(tmp_path / "r.db")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with db.session() as s:
        gid = queries.create_group({}, None, session=s).id
        run = queries.create_run(session=s, group_id=gid, model="tiny", engine="hf-generate", label="x", config={},
                                 spec={}, host={}, cells_total=1, owner=(os.uname().nodename, proc.pid, time.time()))
        s.commit()
        assert queries.effective_status(run) == "interrupted"
        me = RunWriter(db).owner
        run.owner_pid, run.owner_started = me[1], me[2]
        assert queries.effective_status(run) == "running"


def test_export_import_round_trip_is_lossless(tmp_path):
    src = memory_db()
    ids = _fill(src, 2)
    with src.session() as s:
        results = [load_result(s.get(Run, i), session=s) for i in ids]
        from store.models import RunGroup

        groups = [g.model_dump() for g in s.exec(__import__("sqlmodel").select(RunGroup))]
    text = to_json(results, groups)
    dst = open_db(tmp_path / "dst.db")
    with dst.session() as s:
        assert import_export(parse_export(text, "x.json"), session=s) == (2, 0)
        s.commit()
    with dst.session() as s:
        again = [load_result(s.get(Run, i), session=s) for i in ids]
        assert import_export(parse_export(text, "x.json"), session=s) == (0, 2)
    assert to_json(again, groups) == text
    for fmt in ("csv", "md", "html"):
        out = render(fmt, again, groups)
        assert "OOM" in out or "oom" in out


def test_delete_and_rename():
    db = memory_db()
    ids = _fill(db, 2)
    with db.session() as s:
        queries.rename_run(ids[0], "renamed", session=s)
        assert queries.delete_runs([ids[1]], session=s) == 1
        s.commit()
        assert [r.id for r in queries.list_runs(session=s)] == [ids[0]]
        assert queries.list_runs(session=s)[0].name == "renamed"
        assert queries.cells_of(ids[1], session=s) == []


def _as_v1(path) -> None:
    """A database as schema v1 left it: no run.notes, cell.flags or noise_floor."""
    con = sqlite3.connect(path)
    with con:
        con.execute("alter table run drop column notes")
        con.execute("alter table cell drop column flags")
        con.execute("drop table noise_floor")
        con.execute("update schema_info set value='1' where key='version'")
    con.close()


def test_a_v1_database_is_upgraded_in_place_and_its_runs_read_as_before(tmp_path):
    from store.queries import list_runs
    from store.results import load_result
    from tests.tui_support import fill_store

    path = tmp_path / "old.db"
    fill_store(path, runs=2)
    _as_v1(path)
    db = open_db(path, create=False)
    with db.session() as s:
        results = [load_result(r, session=s) for r in list_runs(session=s)]
    db.close()
    assert len(results) == 2 and all(r.run["notes"] == [] for r in results)
    assert all(c["flags"] == [] for r in results for c in r.cells)
    con = sqlite3.connect(path)
    assert con.execute("select value from schema_info where key='version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert con.execute("select count(*) from noise_floor").fetchone()[0] == 0
    con.close()


def test_a_migration_cut_short_completes_on_the_next_open(tmp_path):
    path = tmp_path / "half.db"
    open_db(path).close()
    _as_v1(path)
    con = sqlite3.connect(path)
    with con:
        con.execute("alter table run add column notes JSON DEFAULT '[]'")  # the first step ran, then a crash
    con.close()
    open_db(path, create=False).close()
    con = sqlite3.connect(path)
    assert {r[1] for r in con.execute("pragma table_info(cell)")} >= {"flags"}
    assert con.execute("select value from schema_info where key='version'").fetchone()[0] == str(SCHEMA_VERSION)
    con.close()
