"""The sandbox contains hostile programs: each ends failed or timed out, the canary survives,
this process survives, and nothing listens-and-hears from inside.

Every hostile case runs twice: with the Python-level guard (the default) and without it, so
the kernel layers (uid drop, Landlock, rlimits, network namespace) are proven on their own.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from engines.quality import sandbox
from engines.quality.sandbox import Limits, run_many, run_program

FORK_ONCE = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
STUBBORN_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
CONTAINED = {sandbox.FAILED, sandbox.TIMED_OUT}


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary.txt"
    path.write_text("alive")
    return path


@pytest.fixture
def listener():
    """A real TCP server on loopback: if the sandbox had network, the connect would succeed."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    yield srv
    srv.close()


def _accepted(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except (TimeoutError, socket.timeout):
        return False
    conn.close()
    return True


def _fork_is_blocked(limits: Limits) -> None:
    """Run one bounded fork first: never launch a bomb where a single fork gets through."""
    probe = run_program(FORK_ONCE, limits)
    if probe.status == sandbox.PASSED:
        pytest.fail("a single fork succeeded in the sandbox; refusing to run a fork bomb here")
    assert "BlockingIOError" in probe.reason or "disabled" in probe.reason, probe


@pytest.mark.parametrize("guard", [True, False], ids=["guarded", "kernel-only"])
class TestHostile:
    def test_delete_canary_outside_temp_dir(self, guard, canary):
        for code in (f"import os\nos.remove({str(canary)!r})\n",
                     f"import shutil\nshutil.rmtree({str(canary.parent)!r})\n",
                     f"open({str(canary)!r}, 'w').write('pwned')\n"):
            out = run_program(code, Limits(wall_s=5, guard=guard))
            assert out.status in CONTAINED, out
            assert canary.read_text() == "alive"

    def test_fork_bomb(self, guard):
        limits = Limits(wall_s=2, guard=guard)
        _fork_is_blocked(limits)
        before = len(os.listdir("/proc")) if os.path.isdir("/proc") else 0
        out = run_program(FORK_BOMB, limits)
        assert out.status == sandbox.FAILED, out
        out = run_program(STUBBORN_BOMB, limits)  # keeps trying until the wall-time limit
        assert out.status in CONTAINED, out
        if before:
            assert len(os.listdir("/proc")) < before + 50  # nothing left behind

    def test_threads_are_child_processes_too(self, guard):
        code = "import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\n"
        assert run_program(code, Limits(wall_s=5, guard=guard)).status == sandbox.FAILED

    def test_allocate_100_gb(self, guard):
        out = run_program("b = bytearray(100 * 2**30)\nb[-1] = 1\n", Limits(wall_s=5, guard=guard))
        assert out.status == sandbox.FAILED and "MemoryError" in out.reason, out

    def test_infinite_loop_hits_wall_time(self, guard):
        t0 = time.perf_counter()
        out = run_program("while True:\n    pass\n", Limits(wall_s=1, cpu_s=10, guard=guard))
        assert out.status == sandbox.TIMED_OUT and "wall time" in out.reason, out
        assert time.perf_counter() - t0 < 5

    def test_infinite_loop_hits_cpu_time(self, guard):
        out = run_program("while True:\n    pass\n", Limits(wall_s=20, cpu_s=1, guard=guard))
        assert out.status == sandbox.TIMED_OUT and out.reason == "CPU time limit", out

    def test_sleep_forever_hits_wall_time(self, guard):
        out = run_program("import time\ntime.sleep(600)\n", Limits(wall_s=1, guard=guard))
        assert out.status == sandbox.TIMED_OUT, out

    def test_socket_to_loopback(self, guard, listener):
        port = listener.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'x')\n"
        out = run_program(code, Limits(wall_s=5, guard=guard))
        assert out.status in CONTAINED, out
        assert not _accepted(listener)
        udp = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('127.0.0.1', 9))\n"
        if sandbox.layers()["network"] == "network namespace" or guard:
            assert run_program(udp, Limits(wall_s=5, guard=guard)).status in CONTAINED

    def test_kill_the_parent(self, guard):
        for code in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                     "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n"):
            out = run_program(code, Limits(wall_s=5, guard=guard))
            assert out.status in CONTAINED, out
        os.kill(os.getpid(), 0)  # still here (pytest would not reach this line otherwise)


def test_python_guard_is_a_layer_of_its_own(canary):
    """The guard answers before the kernel is asked: its own message, for each kind of escape."""
    cases = {
        "os.fork": "import os\nos.fork()\n",
        "os.kill": "import os\nos.kill(os.getppid(), 9)\n",
        "os.remove": f"import os\nos.remove({str(canary)!r})\n",
        "shutil.rmtree": f"import shutil\nshutil.rmtree({str(canary.parent)!r})\n",
        "subprocess.Popen": "import subprocess\nsubprocess.Popen(['true'])\n",
        "_posixsubprocess.fork_exec": "import multiprocessing as mp\n"
                                      "if __name__ == '__main__':\n"
                                      "    mp.get_context('spawn').Process(target=print).start()\n",
        "socket.socket": "import socket\nsocket.socket()\n",
    }
    outs = run_many(list(cases.values()), Limits(wall_s=10, landlock=False))
    for name, out in zip(cases, outs):
        assert out.status == sandbox.FAILED and f"{name} is disabled in the sandbox" in out.reason, (name, out)
    assert canary.read_text() == "alive"


def test_uid_drop_alone_contains_fork_kill_and_canary(canary):
    """As root, the per-slot uid holds even with Landlock and the guard off."""
    if os.geteuid() != 0:
        pytest.skip("the uid-drop layer exists only when codebench runs as root")
    limits = Limits(wall_s=2, guard=False, landlock=False)
    _fork_is_blocked(limits)
    assert run_program(STUBBORN_BOMB, limits).status in CONTAINED
    assert run_program("import os\nos.kill(os.getppid(), 9)\n", limits).status == sandbox.FAILED
    assert run_program(f"import os\nos.remove({str(canary)!r})\n", limits).status == sandbox.FAILED
    assert canary.read_text() == "alive"


NONROOT_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from engines.quality import sandbox
    from engines.quality.sandbox import Limits, run_program
    canary = sys.argv[2]
    limits = Limits(wall_s=2, guard=False)
    cases = {
        "fork": "import os\\npid = os.fork()\\nif pid == 0:\\n    os._exit(0)\\nos.waitpid(pid, 0)\\n",
        "kill_parent": "import os\\nos.kill(os.getppid(), 9)\\n",
        "canary": f"import os\\nos.remove({canary!r})\\n",
        "socket": "import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\\n",
        "memory": "b = bytearray(100 * 2**30)\\n",
    }
    out = {name: run_program(code, limits).status for name, code in cases.items()}
    if out["fork"] != "passed":
        out["bomb"] = run_program("import os\\nwhile True:\\n    os.fork()\\n", limits).status
    print(json.dumps({"layers": sandbox.layers(), "status": out}))
""")


def test_unprivileged_user_is_contained_by_kernel_layers():
    """What an ordinary user gets (no uid drop): simulated from root with setpriv."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or not setpriv:
        pytest.skip("needs root and setpriv to become an ordinary user; as one, the tests above cover it")
    python = sandbox.layers()["python"]  # one an unprivileged uid can execute
    uid = sandbox.UID_BASE - 1
    home = Path(tempfile.mkdtemp(prefix="codebench-nonroot-"))  # pytest's tmp_path is root-only
    try:
        canary = home / "canary.txt"
        canary.write_text("alive")
        script = home / "run.py"
        script.write_text(NONROOT_SCRIPT)
        for p in (home, canary, script):
            os.chown(p, uid, uid)
        repo = str(Path(sandbox.__file__).resolve().parents[2])
        r = subprocess.run([setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
                            python, "-I", str(script), repo, str(canary)],
                           capture_output=True, text=True, timeout=120, env={}, cwd=home)
        assert r.returncode == 0, r.stderr[-2000:]
        report = json.loads(r.stdout.strip().splitlines()[-1])
        if not report["layers"]["landlock"].startswith("ABI"):
            pytest.skip("no Landlock here: an unprivileged user is contained by rlimits and the guard only")
        assert report["status"]["fork"] == "failed"
        assert all(s in CONTAINED for s in report["status"].values()), report
        assert canary.read_text() == "alive"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_pass_and_fail():
    ok = run_program("print('hello')\nassert sum(range(4)) == 6\n")
    assert ok.status == sandbox.PASSED and ok.stdout == "hello\n" and ok.reason == ""
    bad = run_program("def f():\n    return 1\nassert f() == 2, 'f is wrong'\n")
    assert bad.status == sandbox.FAILED and bad.reason == "AssertionError: f is wrong"
    assert bad.returncode == 1
    syntax = run_program("def f(:\n")
    assert syntax.status == sandbox.FAILED and "SyntaxError" in syntax.reason


def test_clean_room(monkeypatch):
    monkeypatch.setenv("CODEBENCH_SECRET", "leak")
    code = ("import json, os, sys\n"
            "print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'files': os.listdir('.')}))\n"
            "open('scratch.txt', 'w').write('ok')\n"
            "try:\n    input()\nexcept EOFError:\n    print('stdin closed')\n")
    out = run_program(code)
    assert out.status == sandbox.PASSED, out
    first, second = out.stdout.splitlines()
    info = json.loads(first)
    assert "CODEBENCH_SECRET" not in info["env"] and "PATH" not in info["env"] and "HOME" not in info["env"]
    assert info["files"] == ["main.py"]
    assert not os.path.exists(info["cwd"])  # the temp dir is gone
    assert second == "stdin closed"


def test_output_is_truncated_and_bounded():
    out = run_program("import sys\nsys.stdout.write('x' * 100000)\nsys.stderr.write('y' * 100000)\n",
                      Limits(output_bytes=1000))
    assert out.status == sandbox.PASSED
    assert out.stdout.startswith("x" * 1000) and out.stdout.endswith("[truncated]") and len(out.stdout) < 1100
    flood = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
                        Limits(wall_s=10, file_bytes=1 << 20))
    assert flood.status == sandbox.FAILED and "File too large" in flood.reason, flood


def test_a_sandbox_that_cannot_start_is_an_error_not_a_fail(monkeypatch):
    real = sandbox._launch()
    broken = sandbox._Launch(real.prefix, "/nonexistent/python3", real.drop_uid, real.netns)
    monkeypatch.setattr(sandbox, "_launch", lambda: broken)
    out = run_program("print(1)\n")
    assert out.status == sandbox.ERROR and out.reason, out


def test_limits_are_validated():
    for bad in ({"wall_s": 0}, {"memory_bytes": -5}, {"cpu_s": 0}, {"file_bytes": 0}):
        with pytest.raises(ValueError, match="positive"):
            Limits(**bad)


def test_run_many_is_parallel_and_ordered():
    n = os.cpu_count() or 1
    # each program prints its index and when it slept (the host's monotonic clock: no time namespace)
    programs = [f"import time\na = time.monotonic()\ntime.sleep(1)\nprint({i}, a, time.monotonic())\n"
                for i in range(2 * n)]  # fmt: skip
    outs = run_many(programs, Limits(wall_s=10))
    assert [o.stdout.split()[0] for o in outs] == [str(i) for i in range(2 * n)]
    spans = [tuple(map(float, o.stdout.split()[1:])) for o in outs]
    overlapping = any(a0 < b1 and b0 < a1 for i, (a0, a1) in enumerate(spans) for b0, b1 in spans[i + 1:])
    assert overlapping == (n > 1), spans  # concurrency, not one after another (timing-free: sleeps overlap)
    assert len({sandbox._uid(i) for i in range(n)}) == n


def test_layers_are_reported():
    info = sandbox.layers()
    assert set(info) >= {"python", "user", "network", "landlock", "processes", "limits"}
    assert os.path.exists(info["python"])
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        assert "root dropped" in info["user"]
