"""Every file a command or the dashboard writes goes through tui.outputs: never over the database (or its
-wal/-shm/-journal), another SQLite file, a directory, a device or pipe, or into a missing folder."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import cli
from tests.test_cli import _assert_one_line_error
from tests.test_tui_flows import aio, settle, wait_for
from tests.tui_support import fill_store, utc  # noqa: F401  (fixture)


@pytest.fixture
def store(tmp_path, utc):  # noqa: F811
    path = tmp_path / "runs.db"
    return path, fill_store(path, runs=2)


def _other_db(tmp_path: Path) -> Path:
    other = tmp_path / "notes.sqlite"
    con = sqlite3.connect(other)
    con.execute("create table precious (a)")
    con.commit()
    con.close()
    return other


def _targets(tmp_path: Path, db: Path) -> list[tuple[Path, str]]:
    """(output path, what the one-line error must say) for every path a writer must refuse."""
    (tmp_path / "adir").mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.csv"
    link.symlink_to(db)
    hard = tmp_path / "hard.csv"
    os.link(db, hard)
    return [
        (db, "is the database"),
        (Path(f"{db}-wal"), "is the database's -wal file"),
        (Path(f"{db}-shm"), "is the database's -shm file"),
        (Path(f"{db}-journal"), "is the database's -journal file"),
        (link, "is the database"),
        (hard, "is the database"),
        (_other_db(tmp_path), "is a SQLite database"),
        (tmp_path / "adir", "is a directory"),
        (fifo, "not a regular file"),
        (tmp_path / "missing" / "deeper" / "out.txt", f"folder {tmp_path / 'missing'} does not exist"),
    ]


def _snapshot(tmp_path: Path) -> dict[str, bytes | str]:
    """Every file's bytes; the database by its rows (reading a WAL database rewrites its -wal and -shm)."""
    db = tmp_path / "runs.db"
    out: dict[str, bytes | str] = {"rows": "\n".join(sqlite3.connect(db).iterdump())}
    for p in sorted(tmp_path.rglob("*")):
        if not p.is_symlink() and (p.name.startswith("runs.db") or p.stat().st_ino == db.stat().st_ino):
            continue
        if p.is_symlink():
            out[str(p)] = "link -> " + os.readlink(p)
        elif p.is_fifo():
            out[str(p)] = "fifo"
        elif p.is_dir():
            out[str(p)] = "dir"
        else:
            out[str(p)] = p.read_bytes()
    return out


def test_guard_refuses_devices_without_touching_them():
    from tui.errors import UsageError
    from tui.outputs import check_output

    for dev in ("/dev/null", "/dev/zero"):
        with pytest.raises(UsageError, match="not a regular file"):
            check_output(dev, None)


def test_export_refuses_the_database_and_other_precious_paths(store, tmp_path):
    db, ids = store
    for target, why in _targets(tmp_path, db):
        before = _snapshot(tmp_path)
        _assert_one_line_error(cli("export", ids[0], "--format", "csv", "-o", str(target), db=db), why)
        assert _snapshot(tmp_path) == before, target
    ok = tmp_path / "out.csv"
    ok.write_text("old contents")
    assert cli("export", ids[0], "--format", "csv", "-o", str(ok), db=db).returncode == 0
    assert ok.read_text().startswith("run_id,")
    assert sorted(p.name for p in tmp_path.glob(".out.csv*")) == []  # no temp file left


def test_export_refuses_the_default_database(store, tmp_path):
    db, ids = store
    before = db.read_bytes()
    _assert_one_line_error(cli("export", ids[0], "--format", "md", "-o", str(db), env={"CODEBENCH_DB": str(db)}),
                           "is the database")
    assert db.read_bytes() == before


def test_save_study_refuses_the_database_and_other_precious_paths(store, tmp_path):
    db, _ = store
    for target, why in _targets(tmp_path, db):
        before = _snapshot(tmp_path)
        _assert_one_line_error(cli("run", "--dry-run", "--batch", "1", "--save-study", str(target), db=db), why)
        assert _snapshot(tmp_path) == before, target
    study = tmp_path / "s.json"
    assert cli("run", "--dry-run", "--batch", "1", "--save-study", str(study), db=db).returncode == 0
    assert '"batch"' in study.read_text()


@aio
async def test_compare_screen_export_refuses_the_database(store, tmp_path):
    from tui.app import make_app
    from tui.screens.compare import CompareScreen

    db, ids = store
    targets = _targets(tmp_path, db)
    app = make_app(str(db), preload=False)
    notes: list[tuple[str, str]] = []
    async with app.run_test(size=(100, 30)) as pilot:
        screen = CompareScreen(ids)
        await app.push_screen(screen)
        await settle(pilot, lambda a: bool(screen.results))
        screen.notify = lambda text, **kw: notes.append((text, kw.get("severity", "")))  # type: ignore[method-assign]
        for target, why in targets:
            before = _snapshot(tmp_path)
            notes.clear()
            screen.export("csv", target)
            await wait_for(pilot, lambda: bool(notes), 10, f"the export to {target} to answer")
            assert notes[0][1] == "error" and why in notes[0][0], (target, notes)
            assert _snapshot(tmp_path) == before, target
        notes.clear()
        screen.export("html", tmp_path / "fine.html")
        await wait_for(pilot, lambda: bool(notes), 10, "the export to answer")
        assert notes[0][1] != "error", notes
    assert (tmp_path / "fine.html").read_text().startswith("<!doctype html>")


@aio
async def test_setup_save_refuses_the_database(store, tmp_path):
    from tests.tui_support import fixed_check
    from tui.app import make_app

    db, _ = store
    targets = _targets(tmp_path, db)
    app = make_app(str(db), preload=False, check=fixed_check, device="cpu")
    notes: list[tuple[str, str]] = []
    async with app.run_test(size=(100, 30)) as pilot:
        setup = app.screen
        await wait_for(pilot, lambda: bool(setup.choices), 60, "engine checks")
        setup.notify = lambda text, **kw: notes.append((text, kw.get("severity", "")))  # type: ignore[method-assign]
        for target, why in targets + [(tmp_path / "study.json", "")]:
            before = _snapshot(tmp_path)
            notes.clear()
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            await pilot.press("ctrl+u", *list(str(target)), "enter")
            await wait_for(pilot, lambda: bool(notes), 10, f"the save to {target} to answer")
            if why:
                assert notes[0][1] == "error" and why in notes[0][0], (target, notes)
                assert _snapshot(tmp_path) == before, target
            else:
                assert notes[0][1] != "error", notes
    assert '"runs"' in (tmp_path / "study.json").read_text()


def test_written_files_get_the_mode_a_plain_write_would(store, tmp_path):
    from tui.outputs import write_atomic

    db, _ = store
    old = os.umask(0o022)
    try:
        new = write_atomic(tmp_path / "new.csv", "x", db)
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.csv"
        kept.write_text("old")
        kept.chmod(0o600)
        write_atomic(kept, "new", db)
        assert kept.stat().st_mode & 0o777 == 0o600 and kept.read_text() == "new"
    finally:
        os.umask(old)


def test_microbench_json_refuses_the_database_before_it_runs(store, tmp_path):
    db, _ = store
    for target, why in _targets(tmp_path, db):
        before = _snapshot(tmp_path)
        _assert_one_line_error(cli("microbench", "attention", "--json", str(target), db=db, timeout=60), why)
        assert _snapshot(tmp_path) == before, target


def test_writing_through_a_symlink_keeps_the_link(store, tmp_path):
    from tui.outputs import write_atomic

    db, _ = store
    (tmp_path / "studies").mkdir()
    real = tmp_path / "studies" / "s.json"
    real.write_text("old")
    link = tmp_path / "current.json"
    link.symlink_to(real)
    write_atomic(link, "new", db, "--save-study")
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == ["s.json"]
