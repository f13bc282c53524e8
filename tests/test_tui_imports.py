"""The UI process never imports torch, transformers, vllm or llama_cpp, and starts without the store's imports."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

HEAVY = ("torch", "transformers", "vllm", "llama_cpp")

# Runs in a fresh interpreter: every screen, a real study on tiny, then sys.modules.
SCRIPT = r"""
import asyncio, json, sys, time
from pathlib import Path
from tests.tui_support import fill_store
from tui.app import make_app
from tui.screens.compare import CompareScreen
from tui.screens.live import LiveScreen

db = Path(sys.argv[1])
ids = fill_store(db)

async def wait(pilot, cond, limit):
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "timed out"
        await pilot.pause(0.2)

async def main():
    finished = []
    app = make_app(str(db))
    hook = lambda m: finished.append(m) if isinstance(m, LiveScreen.StudyFinished) else None
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await wait(pilot, lambda: bool(app.screen.choices), 60)
        for wid, text in (("grid-batch", "1"), ("grid-input_len", "8"), ("grid-output_len", "2"),
                          ("timing-warmup", "0"), ("timing-iters", "1"), ("timing-repeats", "1")):
            app.screen.query_one("#" + wid).value = text
        await pilot.pause(0.1)
        await pilot.press("ctrl+r")
        await wait(pilot, lambda: finished, 300)
        await pilot.press("f4")
        await wait(pilot, lambda: len(getattr(app.screen, "rows", {})) == 4, 30)
        await app.push_screen(CompareScreen(ids[:2]))
        await wait(pilot, lambda: bool(app.screen.results), 30)
        for key in ("2", "3", "4"):
            await pilot.press(key)
            await pilot.pause(0.2)
        await app.push_screen(LiveScreen(replay_run=ids[0]))
        await wait(pilot, lambda: app.screen.feed is not None, 30)
        await pilot.press("end")
        await pilot.pause(0.5)
    print(json.dumps({"status": finished[0].status, "modules": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))

asyncio.run(main())
""" % (HEAVY,)


def test_ui_process_never_imports_heavy_engines(tiny_model, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "runs.db")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "done"  # a real run went through, in worker processes
    assert out["modules"] == []


def test_app_import_is_lean():
    """Importing the app (what the first frame needs) pulls in neither the store's ORM nor any engine."""
    code = ("import sys, tui.app; bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlmodel', 'sqlalchemy', 'plotext', 'torch', 'transformers', 'numpy', 'pydantic'}); print(bad)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
