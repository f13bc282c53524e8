"""End to end: the real `codebench-tui` in tmux, driven with send-keys and read with capture-pane.

tmux is installed by `make install-test` (apt-get install tmux); the test fails, not skips, without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, rows
from tests.tui_support import fill_store


class Tmux:
    def __init__(self, name: str, width: int = 100, height: int = 30):
        self.socket = f"codebench-test-{os.getpid()}-{name}"
        self.name, self.width, self.height = name, width, height

    def cmd(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        if check and out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {out.stderr}")
        return out.stdout

    def start(self, command: list[str], env: dict[str, str]) -> None:
        flags = [f"-e{k}={v}" for k, v in env.items()]
        self.cmd("new-session", "-d", "-s", self.name, "-x", str(self.width), "-y", str(self.height), *flags,
                 " ".join(command))  # fmt: skip

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.cmd("send-keys", "-t", self.name, key)
            time.sleep(0.05)

    def type(self, text: str) -> None:
        self.cmd("send-keys", "-t", self.name, "-l", text)

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-t", self.name, check=False)

    def wait(self, *needles: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = self.screen()
            if all(n in text for n in needles):
                return text
            time.sleep(0.25)
        raise AssertionError(f"screen never showed {needles!r} within {timeout:g} s; last screen:\n{text}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", self.name],
                              capture_output=True).returncode == 0  # fmt: skip

    def kill(self) -> None:
        self.cmd("kill-server", check=False)


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: apt-get install -y tmux (make install-test does)")
    t = Tmux("dash")
    yield t
    t.kill()


def test_dashboard_in_tmux(tmux, tiny_model, tmp_path):
    db = tmp_path / "runs.db"
    ids = fill_store(db)
    study = tmp_path / "tmux-study.json"
    study.write_text('{"name": "tmux study", "model": "tiny", "runs": [{"engine": "hf-generate"}], '
                     '"grid": {"batch": [1, 2], "input_len": [8], "output_len": [4]}, '
                     '"timing": {"warmup": 0, "iters": 1, "repeats": 1}}')  # fmt: skip
    env = {"CODEBENCH_CACHE": os.environ["CODEBENCH_CACHE"], "TERM": "xterm-256color", "TZ": "UTC",
           "PATH": os.environ.get("PATH", "")}  # fmt: skip
    tmux.start([f"cd {ROOT} &&", sys.executable, "-m", "tui.cli", "--db", str(db)], env)

    tmux.wait("Engines", "Start", "hf-generate")  # the Setup screen, engines checked
    tmux.keys("F4")
    screen = tmux.wait("1–3 of 3", ids[2][:8], "llama.cpp q8_0")
    assert "hf-generate bf16 sdpa" in screen
    tmux.keys("F2", "C-o")
    tmux.wait("Load a study file")
    tmux.keys("C-u")
    tmux.type(str(study))
    tmux.keys("Enter")
    tmux.wait("study loaded", "2 cells")
    tmux.keys("C-r")
    screen = tmux.wait("study tmux study", "finished", timeout=300)
    assert "2/2 cells" in screen and "done" in screen
    tmux.keys("F4")
    tmux.wait("1–4 of 4", "tmux study" if tmux.width > 120 else "hf-generate fp32 sdpa")
    tmux.keys("C-q")
    end = time.monotonic() + 20
    while tmux.alive() and time.monotonic() < end:
        time.sleep(0.2)
    assert not tmux.alive(), "ctrl+q did not quit"
    new = rows(db, "select name, status, cells_total from run where id not in (?, ?, ?)", *ids)
    assert new == [("tmux study", "done", 2)]
    assert rows(db, "select count(*) from cell where status = 'done' and run_id not in (?, ?, ?)", *ids) == [(2,)]


def test_replay_in_tmux_pauses_and_seeks(tmux, tmp_path):
    db = tmp_path / "runs.db"
    ids = fill_store(db)
    env = {"TERM": "xterm-256color", "TZ": "UTC", "PATH": os.environ.get("PATH", "")}
    tmux.start([f"cd {ROOT} &&", sys.executable, "-m", "tui.cli", "--db", str(db), "--replay", ids[0][:6]], env)
    tmux.wait(f"replay {ids[0][:8]}", "playing")
    tmux.keys("Space")
    tmux.wait("paused")
    tmux.keys("End")
    screen = tmux.wait("8/8 cells", "finished")
    assert "GPU1" in screen or "GPU0" in screen
    tmux.keys("Home")
    tmux.wait("0/8 cells")
    tmux.keys("C-q")
    assert Path(db).exists()
