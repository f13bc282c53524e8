"""The Ray executor on a real two-node Ray cluster on 127.0.0.1, running real workers on tiny."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from tests.helpers import FAST, cli, popen_cli, rows
from tests.ray_cluster import LocalCluster

pytest.importorskip("ray")  # the `ray` extra; `make test` installs it

STUDY = ["run", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2", "--input-len", "16", "--output-len", "8", *FAST]


@pytest.fixture
def cluster():
    c = LocalCluster().start()
    try:
        yield c
    finally:
        c.stop()


def _runs(db) -> dict[str, dict]:
    out = {}
    for run_id, label, status, host in rows(db, "select id, label, status, host from run"):
        cells = rows(db, "select batch, input_len, output_len, status from cell where run_id=? order by idx", run_id)
        out[label] = {"id": run_id, "status": status, "host": json.loads(host or "{}"), "cells": cells}
    return out


def test_a_study_spreads_over_two_nodes_and_equals_a_local_run(cluster, tmp_path):
    remote_db, local_db = tmp_path / "ray.db", tmp_path / "local.db"
    cli(*STUDY, "--executor", cluster.address, db=remote_db, check=True, timeout=600)
    cli(*STUDY, db=local_db, check=True, timeout=600)
    remote, local = _runs(remote_db), _runs(local_db)

    assert remote.keys() == local.keys() == {"hf-generate fp32 sdpa", "hf-pipeline fp32 sdpa"}
    for label in remote:  # cell for cell: the same shapes and statuses
        assert remote[label]["status"] == local[label]["status"] == "done"
        assert remote[label]["cells"] == local[label]["cells"]
    nodes = {r["host"]["ray"]["node_id"] for r in remote.values()}
    assert nodes == {cluster.node_id("head"), cluster.node_id("worker")}, "one run per node (1 CPU each)"
    assert all(r["host"]["ray"]["address"] == cluster.address for r in remote.values())
    assert all("ray" not in r["host"] for r in local.values())
    for r in remote.values():  # telemetry sampled on the run's own node, stored here
        (samples, peak_rss), = rows(remote_db, "select count(*), max(rss_bytes) from telemetry where run_id=?", r["id"])
        assert samples > 0 and peak_rss > 50 * 2**20, "the remote worker's process tree was sampled"
        (tps,) = rows(remote_db, "select min(tokens_per_s) from cell where run_id=?", r["id"])[0]
        assert tps > 0


def test_a_lost_node_crashes_its_cell_and_the_study_goes_on(cluster, tmp_path):
    db = tmp_path / "lost.db"
    worker_node = cluster.node_id("worker")
    proc = popen_cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2,3,4", "--input-len", "16,32",
                     "--output-len", "64", "--warmup", "0", "--iters", "2", "--repeats", "2",
                     "--executor", cluster.address, db=db)  # fmt: skip
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            runs = rows(db, "select id, host from run") if db.exists() else []
        except sqlite3.OperationalError:  # the database is being created
            continue
        for run_id, host in runs:
            on_worker = json.loads(host or "{}").get("ray", {}).get("node_id") == worker_node
            if on_worker and rows(db, "select count(*) from cell where run_id=?", run_id)[0][0] >= 1:
                victim = run_id
    assert victim, f"no run reached the worker node: {proc.communicate()}"
    before = rows(db, "select idx, status, tokens_per_s from cell where run_id=? order by idx", victim)
    cluster.kill_worker_node()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    runs = {r["id"]: r for r in _runs(db).values()}
    lost = runs[victim]
    statuses = [c[3] for c in lost["cells"]]
    assert len(statuses) == 8 and statuses.count("crashed") == 1, statuses
    crashed_error = rows(db, "select error from cell where run_id=? and status='crashed'", victim)[0][0]
    assert "Ray node lost" in crashed_error or "worker died" in crashed_error, crashed_error
    assert statuses.count("done") == 7, "the remaining cells ran on a fresh worker on the surviving node"
    assert lost["host"]["ray"]["node_id"] == cluster.node_id("head")
    assert [n["node_id"] for n in lost["host"]["earlier_nodes"]] == [worker_node]
    after = rows(db, "select idx, status, tokens_per_s from cell where run_id=? order by idx", victim)
    assert after[: len(before)] == before, "cells streamed before the loss are kept as they were"
    other = next(r for i, r in runs.items() if i != victim)
    assert [c[3] for c in other["cells"]] == ["done"] * 8, "the other node's run is untouched"
    # Interleaved: the other run held the surviving node, so the lost run finished its grid after it, and says so.
    (notes,), = rows(db, "select notes from run where id=?", victim)
    assert any("ran after them, not interleaved" in n for n in json.loads(notes)), notes


def test_an_unreachable_cluster_is_a_one_line_error(tmp_path):
    from tests.ray_cluster import free_port

    db = tmp_path / "none.db"
    proc = cli(*STUDY, "--executor", f"ray://127.0.0.1:{free_port()}", db=db)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot reach Ray" in proc.stderr
    assert "Traceback" not in proc.stderr and not db.exists()


@pytest.mark.parametrize("schedule", ["sequential", "interleaved"])
def test_a_speculative_run_is_compared_to_its_baseline(cluster, tmp_path, schedule):
    db = tmp_path / "spec.db"
    cli("run", "--engine", "hf-generate", "--spec", "none,ngram=2", "--batch", "1", "--input-len", "32",
        "--output-len", "16", *FAST, "--executor", cluster.address, "--schedule", schedule, db=db, check=True,
        timeout=600)  # fmt: skip
    (base_id, base_end), = rows(db, "select id, finished_at from run where label not like '%spec=ngram%'")
    (spec_id,), = rows(db, "select id from run where label like '%spec=ngram%'")
    (started, metrics, reps), = rows(db, "select started_at, metrics, repeats from cell where run_id=?", spec_id)
    if schedule == "sequential":  # runs go out at once; the speculative one waits for its matched baseline
        assert started > base_end, "the speculative run started after its matched baseline finished"
    else:  # both stay loaded on the cluster and take turns, repeat by repeat
        (base_reps,), = rows(db, "select repeats from cell where run_id=?", base_id)
        t0s = sorted([(r["t0"], "spec") for r in json.loads(reps)] + [(r["t0"], "base") for r in json.loads(base_reps)])
        assert [who for _, who in t0s] == ["base", "spec", "spec", "base"]
    reference = json.loads(metrics)["reference"]
    assert reference["run_id"] == base_id and reference["speedup"] > 0


def test_ctrl_c_cancels_every_remote_run_and_keeps_finished_cells(cluster, tmp_path):
    import signal

    import psutil

    db = tmp_path / "cancel.db"
    t0 = time.time()
    proc = popen_cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2,3,4,5,6", "--input-len", "16",
                     "--output-len", "64", *FAST, "--executor", cluster.address, db=db)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if db.exists() and rows(db, "select count(*) from cell where status='done'")[0][0] >= 2:
            break
    finished = rows(db, "select run_id, idx, tokens_per_s from cell where status='done'")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    statuses = {s for (s,) in rows(db, "select status from run")}
    assert statuses == {"cancelled"}, statuses
    kept = rows(db, "select run_id, idx, tokens_per_s from cell where status='done'")
    assert set(finished) <= set(kept)
    time.sleep(2)  # the actors' workers watch their parents
    workers = [p for p in psutil.process_iter(["cmdline", "create_time"])
               if "engines.harness.worker" in " ".join(p.info["cmdline"] or []) and p.info["create_time"] >= t0
               and _ours(p)]  # fmt: skip
    assert not workers, "no worker outlives a cancelled study"


def _ours(proc) -> bool:
    """A worker of this checkout (WorkerClient puts its root first on PYTHONPATH), not another one's on the machine."""
    import psutil

    from tests.helpers import ROOT

    try:
        return proc.environ().get("PYTHONPATH", "").split(":")[0] == str(ROOT)
    except psutil.Error:
        return False
