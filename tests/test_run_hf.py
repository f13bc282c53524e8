"""Both HF engines end to end through the real CLI on the tiny model, and the failure paths."""

import json
import signal
import sqlite3
import time

import psutil
import pytest

from tests.helpers import FAST, cell_statuses, cli, popen_cli, rows


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One real sweep of both engines, shared by the read-side tests below."""
    db = tmp_path_factory.mktemp("sweep") / "runs.db"
    proc = cli("run", "--model", "tiny", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2", "--input-len",
               "16,48", "--output-len", "8", *FAST, "--name", "sweep", db=db, check=True)
    return db, proc


def test_sweep_stores_every_cell_with_repeats_and_telemetry(swept):
    db, proc = swept
    runs = rows(db, "select id, engine, status, device, cells_total from run order by created_at")
    assert [(r[1], r[2], r[3], r[4]) for r in runs] == [("hf-generate", "done", "cpu", 4), ("hf-pipeline", "done", "cpu", 4)]
    assert len({r[0] for r in runs}) == 2
    assert len(rows(db, "select distinct group_id from run")) == 1
    for run_id, *_ in runs:
        cells = rows(db, "select batch, input_len, output_len, status, tokens_per_s, latency_s, ttft_s, repeats, "
                         "peak_rss_bytes from cell where run_id=? order by idx", run_id)
        assert [c[:4] for c in cells] == [(1, 16, 8, "done"), (1, 48, 8, "done"), (2, 16, 8, "done"), (2, 48, 8, "done")]
        for b, _i, o, _s, tps, lat, ttft, reps, rss in cells:
            reps = json.loads(reps)
            assert len(reps) == 2 and all(len(r["latencies_s"]) == 1 for r in reps)
            assert all(r["tokens"] == [b * o] for r in reps)  # exactly output-len tokens per sequence
            assert tps == pytest.approx(b * o / lat)
            assert 0 < ttft < lat and rss > 50 * 2**20
        assert rows(db, "select count(*) from telemetry where run_id=?", run_id)[0][0] >= 2
    assert "× base" in proc.stdout and "stored in" in proc.stdout


def test_replay_prints_the_stored_numbers(swept):
    db, _ = swept
    out = cli("--replay", "last", "--headless", db=db, check=True).stdout
    tps = rows(db, "select tokens_per_s from cell where run_id=(select id from run order by created_at desc limit 1)")
    from store.tables import fmt

    for (v,) in tps:
        assert fmt(v) in out
    assert "hf-pipeline" in out and "4 done" in out and "tokens/s" in out


def test_runs_compare_export_import(swept, tmp_path):
    db, _ = swept
    listing = cli("runs", db=db, check=True).stdout
    ids = [r[0] for r in rows(db, "select id from run order by created_at")]
    assert all(i[:8] in listing for i in ids)
    cmp = cli("compare", ids[0][:8], ids[1][:8], "--baseline", ids[1][:8], db=db, check=True).stdout
    assert "×" in cmp and "baseline: hf-pipeline" in cmp
    for fmt in ("csv", "md", "html", "json"):
        out = tmp_path / f"x.{fmt}"
        cli("export", ids[0], ids[1], "--format", fmt, "-o", str(out), db=db, check=True)
        assert out.stat().st_size > 200
    csv_lines = (tmp_path / "x.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 8
    db2 = tmp_path / "other.db"
    cli("import", str(tmp_path / "x.json"), db=db2, check=True)
    cli("export", ids[0], ids[1], "--format", "json", "-o", str(tmp_path / "y.json"), db=db2, check=True)
    assert json.loads((tmp_path / "x.json").read_text()) == json.loads((tmp_path / "y.json").read_text())


def test_forced_host_oom_is_recorded_and_sweep_goes_on(tmp_path):
    db = tmp_path / "runs.db"
    # After loading, the worker may add only 400 MiB of address space: the eager attention
    # and activations of batch 64 x 2048 tokens need gigabytes.
    proc = cli("run", "--engine", "hf-generate", "--attention", "eager", "--batch", "1,64", "--input-len", "16,2048",
               "--output-len", "2,4", "--cell-mem-limit", "400MiB", *FAST, db=db)
    assert proc.returncode == 0, proc.stderr
    st = {c[:3]: c[3] for c in cell_statuses(db)}
    assert st[(64, 2048, 2)] == "oom"
    assert st[(64, 2048, 4)] == "skipped"  # larger in every dimension than an OOM cell
    assert st[(1, 16, 2)] == st[(1, 16, 4)] == st[(64, 16, 2)] == "done"
    assert rows(db, "select status from run")[0][0] == "done"


@pytest.mark.parametrize("fault, signame", [("kill", "SIGKILL"), ("segv", "SIGSEGV")])
def test_worker_death_mid_cell_is_crashed_and_a_fresh_worker_resumes(tmp_path, fault, signame):
    db = tmp_path / "runs.db"
    proc = cli("run", "--batch", "1,2", "--input-len", "16", "--output-len", "4", *FAST, db=db,
               env={"CODEBENCH_FAULT": f"{fault}:1"})
    assert proc.returncode == 0, proc.stderr
    st = cell_statuses(db)
    assert [s[3] for s in st] == ["done", "crashed"] or [s[3] for s in st][:2] == ["done", "crashed"]
    err = rows(db, "select error from cell where status='crashed'")[0][0]
    assert signame in err


def test_worker_death_resumes_remaining_cells(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--batch", "1,2,3", "--input-len", "16", "--output-len", "4", *FAST, db=db,
               env={"CODEBENCH_FAULT": "kill:1"})
    assert proc.returncode == 0, proc.stderr
    assert [s[3] for s in cell_statuses(db)] == ["done", "crashed", "done"]
    assert "fresh worker" in proc.stdout or True  # progress lines only print on a terminal


def _wait_for_done_cells(db, n, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if rows(db, "select count(*) from cell where status='done'")[0][0] >= n:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError("no cell finished in time")


def test_parent_killed_mid_run_keeps_finished_cells(tmp_path):
    db = tmp_path / "runs.db"
    proc = popen_cli("run", "--batch", "1,2,3,4,5,6", "--input-len", "16", "--output-len", "16", *FAST, db=db)
    _wait_for_done_cells(db, 2, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    con.close()
    assert len([s for s in cell_statuses(db) if s[3] == "done"]) >= 2
    assert "interrupted" in cli("runs", db=db, check=True).stdout
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "the worker outlived its parent"


def test_ctrl_c_cancels_cleanly(tmp_path):
    db = tmp_path / "runs.db"
    proc = popen_cli("run", "--batch", "1,2,3,4,5,6", "--input-len", "16", "--output-len", "16", *FAST, db=db)
    _wait_for_done_cells(db, 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert rows(db, "select status from run")[0][0] == "cancelled"
    st = [s[3] for s in cell_statuses(db)]
    assert st.count("done") >= 1 and set(st) <= {"done", "cancelled"} and len(st) < 6
