"""An engine's own OpenAI-compatible server as a child process: started on 127.0.0.1 on a free port, ready when
its health endpoint answers, stopped with its process group. Standard library only."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from engines.base import SpecError

LOG_TAIL = 20_000  # bytes of the server's log kept with the run


class ServerDied(RuntimeError):
    """The server exited during a cell: the cell is `crashed`, and the next cell starts a fresh server."""

    crashed = True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the worker that started it dies (killed, crashed), so none is orphaned."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class ServerProcess:
    """`argv` with {port} in it; `health` is the path that answers 200 once the model is loaded."""

    def __init__(self, name: str, argv: list[str], health: str = "/health", port: int | None = None,
                 ready_timeout_s: float = 600.0, env: dict[str, str] | None = None):  # fmt: skip
        if not Path(argv[0]).is_file():
            raise SpecError(f"{name}: the server binary {argv[0][-120:]} does not exist; install the engine's extra "
                            "(`codebench-tui engines` says how)")  # fmt: skip
        if port is not None and port_in_use(port):
            raise SpecError(f"{name}: port {port} on 127.0.0.1 is in use; pick another with --opt port=N or leave "
                            "port out (a free one is chosen)")  # fmt: skip
        self.name, self.template, self.health = name, argv, health
        self.fixed_port, self.ready_timeout_s, self.env = port, ready_timeout_s, env
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0
        self.log_path = Path(tempfile.mkdtemp(prefix="codebench-server-")) / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def argv(self) -> list[str]:
        return [a.replace("{port}", str(self.port)) for a in self.template]

    def start(self) -> float:
        """Start and wait until ready; returns the seconds it took. A server that exits first, or is not ready in
        time, is a one-line error with the last line of its log."""
        self.port = self.fixed_port or free_port()
        t0 = time.perf_counter()
        log = open(self.log_path, "ab")
        log.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(self.env or {})}, start_new_session=True,
                                     preexec_fn=_die_with_parent)  # fmt: skip
        log.close()
        self.starts += 1
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} {self.how_it_ended()} before it was ready")
            if self._healthy():
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > self.ready_timeout_s:
                self.stop()
                raise RuntimeError(f"{self.name} was not ready after {self.ready_timeout_s:g} s (raise --opt "
                                   f"ready_timeout_s): {self.last_line()}")  # fmt: skip
            time.sleep(0.1)

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", self.health)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def how_it_ended(self) -> str:
        """'was killed by SIGKILL', or 'exited with code 1: <the last line of its log>'."""
        code = self.proc.poll() if self.proc else None
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}: {self.last_line()}"

    def stop(self) -> None:
        """The server and everything it started (its process group): TERM, then KILL. A server that already died
        may have left children behind (vLLM's engine core and workers): they go too."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break  # nobody left in the group
            except PermissionError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                self.proc.poll()  # reap the leader, so it does not count as alive
                time.sleep(0.05)
            if not _group_alive(self.proc.pid):
                break
        self.proc.poll()

    def close(self) -> None:
        """Stop the server and remove its log (the run keeps what it needs of it)."""
        self.stop()
        shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def log_tail(self, limit: int = LOG_TAIL) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.log_tail(4000).splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "(no log)"
