"""serve:llama.cpp: codebench starts llama.cpp's own llama-server on tiny, drives a concurrency x request-rate
grid through it, and survives the server being killed mid-cell. Needs the llamacpp extra; llama-server is built
from the installed llama-cpp-python's sdist on first use (minutes; cached with llama.cpp's other tools)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("llama_cpp")

from store.annotate import flag_codes  # noqa: E402
from tests.helpers import cell_statuses, cli, rows  # noqa: E402

LOAD = ["--warmup", "0", "--iters", "1", "--repeats", "2"]


def _export(db) -> dict:
    proc = cli("export", "last", "--format", "json", db=db, check=True)
    return json.loads(proc.stdout)["runs"][0]


def _serve(db, *args: str) -> dict:
    """A serve:llama.cpp study on tiny through the real CLI; the stored run, as exported."""
    proc = cli("run", "--model", "tiny", "--engine", "serve:llama.cpp", *args, *LOAD, "--quiet", db=db, timeout=1400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _export(db)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_concurrency_by_rate_grid_through_llama_server(tmp_path):
    db = tmp_path / "runs.db"
    run = _serve(db, "--concurrency", "1,4", "--request-rate", "50,inf", "--requests", "12", "--isl-osl", "32/16",
                 "--seed", "3", "--slo", "ttft=20s,itl=10s")  # fmt: skip
    server = run["runtime"]["server"]
    assert server["argv"][0].endswith("llama-server") and "--port" in server["argv"] and server["quant"] == "f32"
    assert "listening" in run["runtime"]["server_log"] or "HTTP server" in run["runtime"]["server_log"]
    cells = run["cells"]
    assert [(c["batch"], c["params"]["request_rate"], c["status"]) for c in cells] == [
        (1, 50.0, "done"), (1, "inf", "done"), (4, 50.0, "done"), (4, "inf", "done")]
    for c in cells:
        s = c["metrics"]["serving"]
        why = [f for rep in c["repeats"] for extra in rep["extra"] for f in extra["failed"]]
        assert s["requests"] == 24 and s["failed"] == 0 and s["passes"] == 2, why  # 12 requests x 2 repeats
        assert s["concurrency"] == c["batch"] and s["goodput"]["attainment"]["all"] == 1.0  # a generous SLO
        assert 0 < s["ttft_s"]["p50"] <= s["ttft_s"]["p99"] and 0 <= s["itl_s"]["p50"] <= s["itl_s"]["p99"]
        # a client the 2 cores starve reads several tokens' segments at once, stamped alike: then the cell says so
        assert s["itl_s"]["p50"] > 0 or "merged" in flag_codes(c), (c["batch"], s["itl_s"], c.get("flags"))
        logs = [r for rep in c["repeats"] for extra in rep["extra"] for r in extra["requests_log"]]
        assert len(logs) == 24 and all(r["ok"] and r["tokens"] == 16 and len(r["itl"]) >= 1 for r in logs)
        # every request's send time is stored; a paced cell sends at its arrival times or later (a busy slot)
        assert all(r["send"] >= r["due"] - 0.005 for r in logs)
        # the cell's RSS is the server's (the stack's); the load generator's own is kept apart
        assert c["peak_rss_bytes"] == c["metrics"]["last_extra"]["server_peak_rss_bytes"] > 0
        assert c["metrics"]["client_peak_rss_bytes"] > 0
    paced = cells[0]["repeats"][0]["extra"][0]["requests_log"]
    assert paced[-1]["due"] > 0.05  # 11 gaps at 50/s: about 0.2 s
    # the same seed sends the same requests at the same times: the first repeat of both runs of the cell agree
    again = _serve(db, "--concurrency", "1", "--request-rate", "50", "--requests", "12", "--isl-osl", "32/16",
                   "--seed", "3")  # fmt: skip
    second = again["cells"][0]["repeats"][0]["extra"][0]["requests_log"]
    assert [(r["due"], r["prompt"]) for r in second] == [(r["due"], r["prompt"]) for r in paced]
    assert len({r["prompt"] for r in paced}) == 12  # twelve different prompts


def _kill_llama_server_when_busy(db: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first llama-server of this test once it has been serving for a second: counted from the moment
    the run stores its load time (the server is up and probed), not from its start, which a slow host stretches."""
    loaded_at = None
    while not stop.is_set() and not killed:
        loaded_at = loaded_at or (_loaded(db) and time.monotonic())
        if loaded_at and time.monotonic() - loaded_at > 1.0:
            for p in psutil.process_iter(["name", "cmdline"]):
                if p.info["name"] == "llama-server" and "--no-webui" in (p.info["cmdline"] or []):
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
        time.sleep(0.05)


def _loaded(db: Path) -> bool:
    import sqlite3

    try:
        return bool(rows(db, "select count(*) from run where json_extract(runtime, '$.load_s') is not null")[0][0])
    except sqlite3.OperationalError:  # the study is writing, or has not made its tables yet
        return False


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_server_killed_mid_cell_crashes_that_cell_and_the_next_restarts_it(tmp_path):
    db = tmp_path / "runs.db"
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_llama_server_when_busy, args=(db, stop, killed), daemon=True)
    watcher.start()
    try:
        # the first cell sends 400 requests one at a time: seconds of work, so the kill lands inside it
        proc = cli("run", "--model", "tiny", "--engine", "serve:llama.cpp", "--concurrency", "1,2",
                   "--requests", "400", "--isl-osl", "32/32", "--warmup", "0", "--iters", "1", "--repeats", "1",
                   "--quiet", db=db, timeout=1400)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert killed, "the watcher never saw llama-server"
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = [s[-1] for s in cell_statuses(db)]
    assert statuses == ["crashed", "done"], statuses
    run = _export(db)
    assert "serve:llama.cpp was killed by SIGKILL during the cell" in run["cells"][0]["error"]
    assert run["cells"][1]["metrics"]["serving"]["failed"] == 0
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    # no server outlives the study
    assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "llama-server"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_peak_goodput_search_on_llama_server_is_a_consistent_bisection(tmp_path):
    db = tmp_path / "runs.db"
    run = _serve(db, "--concurrency", "1,2,4,8,16", "--requests", "16", "--isl-osl", "64/16", "--slo", "ttft=30ms",
                 "--attainment", "0.9", "--search", "peak-goodput")  # fmt: skip
    (search,) = run["runtime"]["search"]["searches"]
    path = search["path"]
    assert 2 <= len(path) <= 3 and path[0]["concurrency"] == 4  # the middle of five, then one side
    met = [p["concurrency"] for p in path if p["met"]]
    missed = [p["concurrency"] for p in path if not p["met"]]
    assert all(m < x for m in met for x in missed)  # what the bisection assumes, and what it found
    assert search["peak_concurrency"] == (max(met) if met else None)
    assert all(p["met"] == (p["attainment"] >= 0.9) for p in path)
    done = sorted(c["batch"] for c in run["cells"] if c["status"] == "done")
    assert done == sorted(p["concurrency"] for p in path)
    assert all(c["status"] == "skipped" for c in run["cells"] if c["batch"] not in done)
