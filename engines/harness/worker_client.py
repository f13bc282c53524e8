"""A `python -m engines.harness.worker` child seen from the process that drives it (the runner here, a Ray actor on a node).

Light on purpose: a Ray actor imports it on its node, and every import there delays the run's start.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from engines.study import commands as cmds
from engines.study import events as ev

_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class WorkerExited:
    returncode: int
    stderr_tail: str
    reason: str = ""  # set where the exit code does not say it (a lost Ray node)

    def describe(self) -> str:
        if self.reason:
            return self.reason
        rc = self.returncode
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.Signals._value2member_map_ else f"exit code {rc}"
        return f"worker died ({how})"

    def cause(self) -> str:
        """One line for the store: how it died and the last thing it said (the whole tail went to the live log)."""
        lines = [line.strip() for line in self.stderr_tail.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        last = last if len(last) <= 300 else last[:299] + "…"
        return f"{self.describe()}: {last}" if last else self.describe()


class WorkerClient:
    """A `python -m engines.harness.worker` child: commands in on stdin, events out on stdout."""

    remote = False

    def __init__(self, run_id: str, env: dict[str, str] | None = None, tail_lines: int = 60,
                 argv: list[str] | None = None, extra_env: dict[str, str] | None = None):  # fmt: skip
        self.run_id = run_id
        self.env = env
        self.extra_env = dict(extra_env or {})  # the study's worker_env: opt-in settings, stored with the run
        self.argv = argv or [sys.executable, "-m", "engines.harness.worker"]
        self.proc: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._stderr_done = threading.Event()

    def start(self) -> int:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizer threads only; generation is untouched
        # Threads and waiting stay at each library's defaults: a setting such as OMP_WAIT_POLICY=PASSIVE
        # is the user's (--worker-env), and contention is flagged per cell instead (store.flags).
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True,  # Ctrl-C reaches the parent only; it decides
        )  # fmt: skip
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        return self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._tail.append(line)
                self.events.put(ev.Log(self.run_id, time.time(), level="stderr", message=line))
        self._stderr_done.set()

    def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in self.proc.stdout:
            try:
                self.events.put(ev.decode(raw))
            except Exception:
                self._tail.append(raw.decode(errors="replace").rstrip())
        rc = self.proc.wait()
        self._stderr_done.wait(5)
        self.events.put(WorkerExited(rc, self.stderr_tail()))

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def send(self, cmd: cmds.Command) -> bool:
        try:
            assert self.proc and self.proc.stdin
            self.proc.stdin.write((cmds.encode(cmd) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, AssertionError):
            return False

    def get(self, timeout: float) -> ev.Event | WorkerExited | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self, grace_s: float = 10.0) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.send(cmds.Exit())
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdin,):
            try:
                stream and stream.close()
            except OSError:
                pass
