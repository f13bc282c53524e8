"""kill -9 of the parent at random points of database creation and of a study's writing: the file stays whole,
opens again, and every run and cell reads as one of the statuses the tool knows."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time

import psutil

from store.models import CELL_STATUSES
from tests.helpers import ROOT, cli, popen_cli, rows

KNOWN_RUN = {"done", "failed", "cancelled", "interrupted", "running"}


def _check_store(db) -> None:
    """The file is whole; codebench opens it; the listing and every stored status are ones it knows."""
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    con.close()
    listing = cli("runs", db=db)
    assert listing.returncode in (0, 2) and "Traceback" not in listing.stderr, listing.stderr
    if listing.returncode == 2:  # only a database killed before its first run: "no database ... yet"
        assert "no database" in listing.stderr or "no runs" in listing.stdout, listing.stderr
        return
    try:
        statuses = rows(db, "select status from run")
        cells = rows(db, "select status from cell")
    except sqlite3.OperationalError:  # killed before its tables existed: made again on the next open
        return
    assert {s for (s,) in statuses} <= KNOWN_RUN
    assert {s for (s,) in cells} <= set(CELL_STATUSES)
    from store.db import open_db
    from store.queries import effective_status, list_runs

    store = open_db(db, create=False)
    with store.session() as s:  # the writer is dead: nothing may still read as running
        assert "running" not in {effective_status(r) for r in list_runs(session=s)}
    store.close()


def test_kill_during_database_creation_leaves_a_file_that_opens(tmp_path):
    code = "import sys; from store.db import open_db; open_db(sys.argv[1]).close()"
    rng = random.Random(7)
    for attempt in range(12):
        path = tmp_path / f"made-{attempt}.db"
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT)
        time.sleep(rng.uniform(0.0, 0.6))  # the import takes most of it; the schema a few ms
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert rows(path, "select value from schema_info where key='version'") == [("2",)]
        _check_store(path)


def test_kill_of_the_parent_at_random_points_of_a_study(tmp_path):
    rng = random.Random(11)
    db = tmp_path / "runs.db"
    for attempt in range(6):
        proc = popen_cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2,3", "--input-len", "8",
                         "--output-len", "4", "--warmup", "0", "--iters", "1", "--repeats", "2", db=db)  # fmt: skip
        time.sleep(rng.uniform(0.5, 12.0))
        workers = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"attempt {attempt}: workers outlived their parent"
        _check_store(db)
    # the database keeps working: a whole study after six kills
    cli("run", "--batch", "1", "--input-len", "8", "--output-len", "2", "--warmup", "0", "--iters", "1", "--repeats",
        "1", db=db, check=True)  # fmt: skip
    assert rows(db, "select status from run order by created_at desc limit 1") == [("done",)]
