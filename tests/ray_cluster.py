"""A private Ray cluster on 127.0.0.1 for tests and benchmarks: a head and one worker node, each a
`ray start --block` process group of its own so one node can be killed alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Token auth off: a ~/.ray/auth_token on the machine would turn it on for `ray start`, not for the client.
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, cpus_per_node: int = 1, worker_node: bool = True):
        self.cpus = cpus_per_node
        self.with_worker = worker_node
        self.temp = tempfile.mkdtemp(prefix="cbray", dir="/tmp")  # short: Ray's socket paths have a length cap
        self.gcs_port, self.client_port = free_port(), free_port()
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def _start(self, *args: str, log: str) -> subprocess.Popen:
        common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
                  "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]  # fmt: skip
        out = open(Path(self.temp) / log, "wb")
        return subprocess.Popen([RAY, "start", *args, *common], env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def start(self, timeout_s: float = 120) -> "LocalCluster":
        self.head = self._start("--head", "--port", str(self.gcs_port), "--ray-client-server-port",
                                str(self.client_port), "--include-dashboard", "false", "--temp-dir", self.temp,
                                "--resources", json.dumps({"head": 1}), log="head.log")  # fmt: skip
        self._wait_started(self.head, "head.log", timeout_s)
        self.worker = None if not self.with_worker else  self._start("--address", f"127.0.0.1:{self.gcs_port}", "--resources",
                                  json.dumps({"worker": 1}), log="worker.log")  # fmt: skip
        if self.worker:
            self._wait_started(self.worker, "worker.log", timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # the client server comes up after the nodes
            try:
                socket.create_connection(("127.0.0.1", self.client_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"Ray client server did not come up; logs in {self.temp}")

    def nodes(self) -> list[dict]:
        """Alive nodes as {node_id, resources}, asked through the GCS (no driver left behind)."""
        code = ("import json, ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR');"
                "print(json.dumps([{'node_id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))") % self.gcs_port  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else []

    def node_id(self, resource: str) -> str:
        return next(n["node_id"] for n in self.nodes() if resource in n["resources"])

    def _wait_started(self, proc: subprocess.Popen, log: str, timeout_s: float) -> None:
        path, deadline = Path(self.temp) / log, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = path.read_text(errors="replace") if path.exists() else ""
            if "Ray runtime started" in text:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited: {text[-2000:]}")
            time.sleep(0.3)
        raise RuntimeError(f"a Ray node did not come up in {timeout_s:g} s; logs in {self.temp}")

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's whole process group: raylet, its workers, everything on it."""
        _killpg(self.worker, signal.SIGKILL)

    def stop(self) -> None:
        for proc in (self.worker, self.head):  # a graceful `ray stop` takes half a minute; nothing here needs it
            _killpg(proc, signal.SIGKILL)
            proc and proc.wait(20)
        # Ray workers that outlived their raylet belong to these sessions: nothing else of Ray is touched.
        subprocess.run(["pkill", "-9", "-f", self.temp], check=False)
        shutil.rmtree(self.temp, ignore_errors=True)


def _killpg(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
