"""Run untrusted Python programs (generated code) each in its own contained process.

Entry points: `run_program(source, limits)` -> Outcome, `run_many(sources, limits, workers)`
-> list[Outcome] in order, `layers()` -> which containment layers this machine provides.

Layers, strongest first (each is probed once; `layers()` says which are active):
  * root only: the child runs as an unprivileged per-slot uid (`unshare --setuid/--setgid`),
    so RLIMIT_NPROC=0 holds (root ignores it), it cannot signal codebench, and it can write
    only to its own temporary directory and world-writable places.
  * network namespace (`unshare --net` as root, `unshare --user --net` where unprivileged user
    namespaces are allowed): no interface but a downed loopback, so no network at all.
  * Landlock (Linux >= 5.13, no privileges needed): writes only beneath the temp dir; from
    ABI 4 no TCP bind/connect; from ABI 6 no signals to processes outside the sandbox.
  * rlimits set in the child before the program runs: CPU seconds, address space, file size,
    no core files, RLIMIT_NPROC=0 (no fork, no threads).
  * a new session, SIGKILLed as a group after the wall-time limit and after every run.
  * a Python-level guard that replaces os.fork/kill/remove..., subprocess and socket with
    functions that raise: a best-effort second layer only (ctypes gets around it).
Every run: a fresh temporary working directory (removed afterwards), an empty environment,
stdin closed, stdout/stderr captured into unlinked files and truncated.

As root the sandbox needs util-linux `unshare` and a Python the unprivileged uid can execute
(here /usr/bin/python3 when the running one lives under /root); without both it refuses with
SandboxUnavailable instead of running code as root without a process limit.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from engines.quality import _prelude

PASSED, FAILED, TIMED_OUT, ERROR = "passed", "failed", "timed_out", "error"
UID_BASE = 1_500_000_000  # per-slot sandbox uids when running as root: unused by any account
_PRELUDE_SRC = Path(_prelude.__file__).read_text(encoding="utf-8")
_landlock_abi = cache(_prelude.landlock_abi)
_PROBE = "import collections, hashlib, json, math, re, typing"  # stdlib readable by the sandbox user


class SandboxUnavailable(RuntimeError):
    """This machine cannot contain untrusted code safely; the message says what to install."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 3.0
    cpu_s: int | None = None  # default: wall_s rounded up
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: any one file, stdout/stderr included
    output_bytes: int = 4096  # kept per stream
    guard: bool = True  # the Python-level second layer; tests turn it off to test the kernel
    landlock: bool = True  # where the kernel has it; tests turn it off to test the other layers

    def __post_init__(self) -> None:
        if not (self.wall_s > 0 and (self.cpu_s is None or self.cpu_s >= 1) and self.memory_bytes > 0
                and self.file_bytes > 0 and self.output_bytes >= 0):
            raise ValueError(f"sandbox limits must be positive (cpu_s a whole number of seconds): {self}")


@dataclass
class Outcome:
    status: str  # passed | failed | timed_out | error
    reason: str = ""  # short: last line of stderr, the limit hit, or why it could not run
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASSED


@dataclass(frozen=True)
class _Launch:
    prefix: tuple[str, ...]  # e.g. ("unshare", "--net", "--setuid", "{uid}", ...); may be empty
    python: str
    drop_uid: bool
    netns: bool
    notes: tuple[str, ...] = field(default=())


def _run_probe(cmd: list[str]) -> bool:
    try:
        r = subprocess.run(cmd, env={}, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _pythons() -> list[str]:
    seen, out = set(), []
    for p in (sys.executable, getattr(sys, "_base_executable", ""), shutil.which("python3"),
              "/usr/bin/python3", "/usr/local/bin/python3"):
        if p and os.path.exists(p) and os.path.realpath(p) not in seen:
            seen.add(os.path.realpath(p))
            out.append(p)
    return out


@cache
def _launch() -> _Launch:
    unshare = shutil.which("unshare") or shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if os.geteuid() != 0:
        if unshare and _run_probe([unshare, "--user", "--net", "--", sys.executable, "-I", "-c", "pass"]):
            return _Launch((unshare, "--user", "--net", "--"), sys.executable, False, True)
        return _Launch((), sys.executable, False, False, ("no unprivileged network namespace",))
    if not unshare:
        raise SandboxUnavailable("running as root needs util-linux `unshare` to drop privileges in the "
                                 "sandbox; install util-linux or run codebench as an ordinary user")
    uid = str(UID_BASE)
    for net in (("--net",), ()):  # containers without CAP_SYS_ADMIN cannot make a netns
        for py in _pythons():
            cmd = [unshare, *net, "--setuid", uid, "--setgid", uid, "--", py, "-I", "-c", _PROBE]
            if _run_probe(cmd):
                prefix = (unshare, *net, "--setuid", "{uid}", "--setgid", "{uid}", "--")
                return _Launch(prefix, py, True, bool(net))
    raise SandboxUnavailable("running as root, but no Python is executable by an unprivileged user "
                             f"(tried {', '.join(_pythons())}); install a system python3 or run as an ordinary user")


def layers() -> dict[str, str]:
    """The containment layers active here, for reports and `codebench-tui doctor`-style output."""
    launch = _launch()
    abi = _landlock_abi()
    out = {
        "python": launch.python,
        "user": f"per-slot uid {UID_BASE}+ (root dropped)" if launch.drop_uid else f"uid {os.geteuid()}",
        "network": "network namespace" if launch.netns else (
            "Landlock: no TCP; Python guard" if abi >= 4 else "Python guard only (best effort)"),
        "landlock": f"ABI {abi}" + (": writes in temp dir, no TCP, no signals out" if abi >= 6 else "")
        if abi else "unavailable",
        "processes": "RLIMIT_NPROC=0" + (" (effective: not root)" if launch.drop_uid or os.geteuid() else ""),
        "limits": "RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_CORE=0; wall time; new session killed as a group",
    }
    return out


class _Slots:
    """Small integers unique among the sandboxes running at once in this process (uid per slot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[int] = set()

    def acquire(self) -> int:
        with self._lock:
            slot = next(i for i in range(len(self._used) + 1) if i not in self._used)
            self._used.add(slot)
            return slot

    def release(self, slot: int) -> None:
        with self._lock:
            self._used.discard(slot)


_SLOTS = _Slots()


def _uid(slot: int) -> int:
    # Distinct per codebench process and per slot, so two sandboxes never share a uid.
    return UID_BASE + (os.getpid() % 100_000) * 1000 + slot % 1000


def _read(f, limit: int) -> str:
    f.seek(0)
    data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + "\n...[truncated]" if len(data) > limit else text


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() != "...[truncated]"]
    return lines[-1][:200] if lines else ""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """True if the process ended within timeout. A pidfd wakes us at once; Popen.wait(timeout)
    polls with sleeps of up to 50 ms, which was most of the sandbox's overhead."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Run one Python program in the sandbox and say how it ended."""
    launch = _launch()
    slot = _SLOTS.acquire()
    uid = _uid(slot)
    work = tempfile.mkdtemp(prefix="codebench-sbx-")
    start = time.perf_counter()
    try:
        program = os.path.join(work, "main.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        if launch.drop_uid:
            for p in (work, program):
                os.chown(p, uid, uid)
        cpu_s = int(limits.cpu_s or max(1, -(-limits.wall_s // 1)))
        landlock = limits.landlock and _landlock_abi() >= 1
        cmd = [a.replace("{uid}", str(uid)) for a in launch.prefix]
        cmd += [launch.python, "-I", "-B", "-c", _PRELUDE_SRC, "main.py", work, str(cpu_s),
                str(int(limits.memory_bytes)), str(int(limits.file_bytes)), str(int(landlock)), str(int(limits.guard))]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(cmd, cwd=work, env={}, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, start_new_session=True, close_fds=True)
            except OSError as exc:
                return Outcome(ERROR, f"could not start the sandbox: {exc}")
            timed_out = not _wait(proc, limits.wall_s)
            if proc.returncode is None:  # unreaped, so its pid and group id cannot have been reused
                _kill_group(proc.pid)  # on time-out, and anything left in the group (there should be none)
            rc = proc.wait()
            wall = time.perf_counter() - start
            stdout, stderr = _read(out, limits.output_bytes), _read(err, limits.output_bytes)
        return _classify(rc, timed_out, stdout, stderr, wall, limits)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _SLOTS.release(slot)


def _classify(rc: int, timed_out: bool, stdout: str, stderr: str, wall: float, limits: Limits) -> Outcome:
    def out(status: str, reason: str) -> Outcome:
        return Outcome(status, reason, rc, stdout, stderr, wall)

    if timed_out:
        return out(TIMED_OUT, f"wall time limit of {limits.wall_s:g} s")
    if rc == 0:
        return out(PASSED, "")
    if rc == _prelude.SETUP_FAILED and stderr.startswith("sandbox setup failed"):
        return out(ERROR, _last_line(stderr))
    if rc in (126, 127) and stderr.startswith("unshare:"):  # the launcher could not run Python
        return out(ERROR, _last_line(stderr))
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        if -rc == signal.SIGXCPU:
            return out(TIMED_OUT, "CPU time limit")
        return out(FAILED, f"killed by {name}")
    return out(FAILED, _last_line(stderr) or f"exit status {rc}")


def run_many(sources: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    """Run programs in parallel, one process each, at most `workers` (default: all cores) at once."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources) or 1))
    _launch()  # probe once, before the threads
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
