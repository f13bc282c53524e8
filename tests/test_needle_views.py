"""The needle heat map and FIM scores in exports and Compare, from a real needle run on tiny and from odd data."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from pathlib import Path

from store.results import RunResult
from store.workload_tables import fim_table, needle_grid, needle_table, workload_columns

REPO = Path(__file__).resolve().parents[1]


def cell(n: int, depth, hits, count, batch: int = 1) -> dict:
    return {"batch": batch, "input_len": n, "output_len": 4, "params": {"depth": depth}, "status": "done",
            "metrics": {"needle": {"hits": hits, "n": count, "accuracy": hits / count if count and isinstance(hits, int) else None}}}


def test_needle_grid_pools_batches_and_skips_odd_figures():
    r = RunResult({"id": "a" * 32, "label": "hf [red]x[/red]\x1b[2J", "model": "tiny"},
                  [cell(256, 0, 1, 1), cell(256, 0, 0, 3, batch=3), cell(256, 50, 2, 2), cell(512, 50, 0, 1),
                   cell(512, 0, "1", 1), cell(512, 100, 1, 0), {"batch": 1, "input_len": 64, "metrics": "x"}])
    contexts, depths, grid = needle_grid(r)
    assert (contexts, depths) == ([256, 512], [0, 50])
    assert grid == {(256, 0): 0.25, (256, 50): 1.0, (512, 50): 0.0}
    t = needle_table(r)
    assert t.headers == ["depth \\ context", "256", "512"]
    assert t.rows == [["0%", "25%", "-"], ["50%", "100%", "0%"]]
    assert "\x1b" not in t.title and fim_table(r) is None
    assert workload_columns(r.cells[0]) == [1.0, "", ""]


def test_needle_run_shows_its_heat_map_in_exports_and_compare(tmp_path):
    db = tmp_path / "runs.db"
    run = [sys.executable, "-m", "tui.cli", "--db", str(db)]
    out = subprocess.run([*run, "run", "--model", "tiny", "--workload", "needle", "--context", "128:257:x2",
                          "--depth", "0,100", "--output-len", "4", "--warmup", "0", "--iters", "1", "--repeats",
                          "1", "--quiet"], capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    md = subprocess.run([*run, "export", "last", "--format", "md"], capture_output=True, text=True, cwd=REPO).stdout
    assert "**needle retrieval accuracy: " in md and "| depth \\\\ context | 128 | 256 |" in md
    assert any(line.startswith("| 100% | ") for line in md.splitlines())
    text = subprocess.run([*run, "export", "last", "--format", "csv"], capture_output=True, text=True, cwd=REPO).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4 and all(r["needle_accuracy"] in ("0.0", "1.0") and r["fim_exact_match"] == "" for r in rows)

    from store.queries import resolve_run
    from tests.test_tui_snapshots import settle
    from tui.app import make_app
    from tui.screens.compare import CompareScreen
    from tui.widgets.needle_map import NeedleMap

    app = make_app(str(db), preload=False)
    with app.database().session() as s:
        run_id = resolve_run("last", session=s).id

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await app.push_screen(CompareScreen([run_id]))
            await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
            view = app.screen.query_one(NeedleMap)
            assert view.display
            from rich.console import Console

            console = Console(width=120, record=True)
            console.print(view.group)
            drawn = console.export_text()
            assert "needle retrieval accuracy" in drawn and "depth \\ context" in drawn and "100%" in drawn

    asyncio.run(body())
