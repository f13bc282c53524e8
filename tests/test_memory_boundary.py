"""`codebench-tui memory`, the memory boundary (store/boundary.py), its Compare view and its export table, on
seed 001's H100 study (a real database from before predictions were stored), a fresh tiny run and hostile data."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import FAST, ROOT, cli
from tests.tui_support import ESCAPES, fill_hostile_store, hostile, leaks, utc  # noqa: F401 (fixture)

SEED = ROOT / "docs/results/2026-11-22-h100-seed001.db"
EAGER = "2c71fd76"  # hf-generate bf16 eager: OOM at b=2 in=16384, b=4 in=8192 and b=8 in=4096 on the H100
FLASH = "fa729bdb"  # the same grid with sdpa-flash: every cell ran
GIB = 2**30


@pytest.fixture
def seed(tmp_path) -> Path:
    """A copy: the study in docs/results is never written."""
    path = tmp_path / "seed001.db"
    shutil.copy(SEED, path)
    return path


def _digest(path: Path) -> str:
    """The database's content (opening it for reading switches it to WAL, which changes the file's header)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()


def _memory_json(db: Path, *args: str) -> dict:
    proc = cli("memory", *args, "--json", db=db, check=True)
    return json.loads(proc.stdout)


def _cell(doc: dict, run: str, batch: int, input_len: int) -> dict:
    (r,) = [r for r in doc["runs"] if r["run_id"].startswith(run)]
    (c,) = [c for c in r["cells"] if (c["batch"], c["input_len"]) == (batch, input_len)]
    return c


def test_projection_on_seed001_moves_the_eager_boundary(seed):
    """80 GiB: eager b=8 in=4096 needs 63.7 GiB + an 18 GiB block, predicted OOM; 141 GiB: it fits."""
    at80 = _memory_json(seed, EAGER, "--device-mem", "80GiB")
    at141 = _memory_json(seed, EAGER, "--device-mem", "141GiB")
    c80, c141 = _cell(at80, EAGER, 8, 4096), _cell(at141, EAGER, 8, 4096)
    assert c80["status"] == c141["status"] == "oom"
    assert c80["fits"] is False and c80["fits_projected"] is False
    assert c141["fits_projected"] is True
    assert at141["projected_bytes"] == 141 * GIB
    assert at80["runs"][0]["capacity_bytes"] == 85520809984  # the H100 the run stored in its host fingerprint
    # the measured boundary and the predicted one agree on this run: no cell ran against the prediction
    assert not [c for c in at80["runs"][0]["cells"] if c["disagrees"]]
    # b=4 in=16384 was skipped and needs 528 GiB: on no card here
    assert _cell(at141, EAGER, 4, 16384)["status"] == "skipped"
    assert _cell(at141, EAGER, 4, 16384)["fits_projected"] is False


def test_errors_per_engine_on_seed001(seed):
    """The eager run's done cells: the model is within 2 % of the allocator peak (engines/models/memory.py)."""
    doc = _memory_json(seed, EAGER)
    (e,) = doc["engines"]
    assert (e["engine"], e["basis"], e["cells"]) == ("hf-generate", "gpu", 3)
    assert abs(e["median_error"]) < 0.02 and abs(e["worst_error"]) < 0.03
    assert e["constant_bytes"] == 0 and e["constant_source"] == "default"  # nothing stored to fit from
    assert doc["projected_bytes"] is None and _cell(doc, EAGER, 8, 4096)["fits_projected"] is None


def test_text_output_names_the_oom_cell_that_would_fit(seed):
    before = _digest(seed)
    out = cli("memory", EAGER, FLASH, "--device-mem", "141GiB", db=seed, check=True).stdout
    assert "b=8 in=4096 out=16 ran out of memory here and is predicted to fit on a 141 GiB card" in out
    assert "OOM 63.7 ✗ →✓" in out and "skipped 754.9 ✗ →✗" in out
    assert out.count("memory boundary:") == 2
    assert _digest(seed) == before  # reads only


def test_no_run_means_the_latest_study(seed):
    doc = _memory_json(seed)
    con = sqlite3.connect(seed)
    group = con.execute("select group_id from run order by created_at desc limit 1").fetchone()[0]
    want = {r for (r,) in con.execute("select id from run where group_id=?", (group,))}
    con.close()
    assert {r["run_id"] for r in doc["runs"]} == want and len(want) > 1


@pytest.mark.parametrize("args, words", [
    (["ffff0000"], "no run with id"),
    (["not-a-run"], "is not a run id"),
    ([EAGER, "--device-mem", "80XB"], "is not a size"),
    ([EAGER, "--device-mem", "9" * 400], "larger than any machine"),
    ([EAGER, "--device-mem", "\x1b[2J80GiB"], "is not a size"),
], ids=["unknown", "not-hex", "bad-unit", "huge", "escape"])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(seed, args, words):
    before = _digest(seed)
    proc = cli("memory", *args, db=seed)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr and not proc.stdout
    assert _digest(seed) == before


def test_a_file_that_is_not_a_database(tmp_path):
    notdb = tmp_path / "notes.txt"
    notdb.write_text("hello\n" * 100)
    proc = cli("memory", db=notdb)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert notdb.read_text() == "hello\n" * 100


def test_hostile_store_shows_no_escapes(tmp_path, utc):  # noqa: F811
    """Stored predictions with hostile values (as an import could bring) and hostile names: nothing reaches the
    terminal raw, nothing crashes, a value of the wrong type counts as absent."""
    path = tmp_path / "hostile.db"
    ids = fill_hostile_store(path, hostile_id=False)
    con = sqlite3.connect(path)
    mem = {"predicted_bytes": 2 * GIB, "largest_block": "x", "basis": hostile("B"), "constant": 5,
           "constant_source": hostile("SRC", "[bold red]"), "capacity_bytes": 4 * GIB, "fits": "yes"}  # fmt: skip
    with con:
        con.execute("update cell set metrics=? where run_id=?", (json.dumps({"memory": mem}), ids[1]))
        con.execute("update run set config=? where id=?", (json.dumps({"engine": hostile("EN")}), ids[1]))
    con.close()
    proc = cli("memory", *ids, "--device-mem", "1GiB", db=path)
    assert proc.returncode == 0, proc.stderr
    assert not leaks(proc.stdout) and "[bold red]" not in proc.stderr
    assert "(SRC[bold" in proc.stdout and "EN[/]␛[2J" in proc.stdout  # shown as text, not obeyed or styled
    doc = json.loads(cli("memory", *ids, "--device-mem", "1GiB", "--json", db=path, check=True).stdout)
    hostile_run = [r for r in doc["runs"] if r["run_id"] == ids[1]][0]
    assert all(c["fits_projected"] is False for c in hostile_run["cells"])  # 2 GiB on a 1 GiB card
    assert all(c["fits"] is True for c in hostile_run["cells"])  # 2 GiB <= 4 GiB; the "x" block counts as 0


def test_fresh_tiny_run(tmp_path):
    """A run made now: every done cell has a predicted and a measured peak (resident memory, on the CPU)."""
    db = tmp_path / "fresh.db"
    cli("run", "--model", "tiny", "--engine", "hf-generate", "--batch", "1,2", "--input-len", "16,32",
        "--output-len", "4", "--device", "cpu", *FAST, db=db, check=True)  # fmt: skip
    doc = _memory_json(db, "--device-mem", "64MiB")
    (run,) = doc["runs"]
    assert len(run["cells"]) == 4 and all(c["status"] == "done" for c in run["cells"])
    assert all(c["predicted_bytes"] and c["measured_bytes"] for c in run["cells"])
    assert all(c["fits"] is True and c["fits_projected"] is False for c in run["cells"])  # a worker > 64 MiB
    (e,) = doc["engines"]
    assert (e["engine"], e["basis"], e["cells"]) == ("hf-generate", "rss", 4)
    assert abs(e["median_error"]) < 0.5  # the CPU constant is measured on another host: same order, not exact
    md = cli("export", "last", "--format", "md", db=db, check=True).stdout
    assert "memory boundary: hf-generate" in md and "| b=2 |" in md


# --- the grid logic -------------------------------------------------------------------------------------------


def _result(cells, device="cuda", capacity=80 * GIB):
    from store.results import RunResult

    run = {"id": "ab" * 16, "label": "hf-generate bf16 eager", "name": None, "device": device,
           "config": {"engine": "hf-generate"}, "model": "m", "status": "done"}  # fmt: skip
    out = []
    for b, i, status, pred, block, peak in cells:
        mem = None if pred is None else {"predicted_bytes": pred, "largest_block": block, "basis": "gpu",
                                          "capacity_bytes": capacity, "constant": 0}  # fmt: skip
        out.append({"batch": b, "input_len": i, "output_len": 16, "status": status, "params": {},
                    "metrics": {"memory": mem} if mem else {}, "peak_gpu_bytes": peak})  # fmt: skip
    return RunResult(run, out)


def test_grid_marks_the_boundary_and_disagreements():
    from store.boundary import boundary_table, grids_of

    r = _result([(1, 512, "done", 10 * GIB, GIB, 10 * GIB),
                 (1, 1024, "done", 70 * GIB, 15 * GIB, 70 * GIB),  # ran, though 70 + 15 > 80: disagrees
                 (2, 512, "oom", 30 * GIB, GIB, 79 * GIB),  # OOM though 31 fits: disagrees
                 (2, 1024, "skipped", 90 * GIB, GIB, None)])  # fmt: skip
    (g,) = grids_of(r, projected=141 * GIB)
    assert (g.batches, g.input_lens, g.capacity) == ([1, 2], [512, 1024], 80 * GIB)
    fits = {k: (c.fits, c.fits_projected, c.disagrees) for k, c in g.cells.items()}
    assert fits == {(1, 512): (True, True, False), (1, 1024): (False, True, True),
                    (2, 512): (True, True, True), (2, 1024): (False, True, False)}  # fmt: skip
    n = g.counts()
    assert (n["disagree"], n["oom_would_fit"], n["fit_projected"]) == (2, 1, 4)
    t = boundary_table(g)
    assert t.rows == [["b=1", "ok 10.0 →✓", "ok 70.0 ✗ →✓ !"], ["b=2", "OOM 30.0 →✓ !", "skipped 90.0 ✗ →✓"]]
    assert t.styles[1][1:] == ["oom", "skipped"]
    # the largest block counts only on a GPU (Prediction.fits): the same figures on the CPU fit
    cpu = _result([(1, 1024, "done", 70 * GIB, 15 * GIB, 70 * GIB)], device="cpu")
    cpu.cells[0]["metrics"]["memory"]["basis"] = "rss"
    assert grids_of(cpu)[0].cells[(1, 1024)].fits is True


def test_store_fit_rule_is_the_models(seed):
    """store.boundary restates Prediction.fits on stored figures: both agree on every seed 001 cell."""
    from store.boundary import fits_on
    from store.db import open_db
    from store.results import load_results
    from tui.predictions import predict_cell, run_capacity

    db = open_db(seed, create=False)  # a copy: opening sets the file's journal mode
    (r,) = load_results(db, [EAGER])
    for cap in (24 * GIB, 80 * GIB, 141 * GIB):
        for c in r.cells:
            p = predict_cell(r.run, c, None, run_capacity(r.run))
            assert fits_on({**p.to_dict()}, cap) == p.fits(cap)
    db.close()


def test_no_prediction_no_table():
    from store.boundary import boundary_tables

    assert boundary_tables(_result([(1, 512, "done", None, None, GIB)])) == []


def test_json_export_stays_as_stored(seed):
    """The Markdown export draws the boundary from computed predictions; JSON keeps exactly what is stored."""
    doc = json.loads(cli("export", EAGER, "--format", "json", db=seed, check=True).stdout)
    assert all("memory" not in c["metrics"] for c in doc["runs"][0]["cells"])
    md = cli("export", EAGER, "--format", "md", db=seed, check=True).stdout
    assert "| b=8 | OOM 63.7 ✗ | skipped 204.1 ✗ | skipped 754.9 ✗ |" in md


# --- the Compare view -----------------------------------------------------------------------------------------


def test_compare_memory_fit_view(snap_compare, seed):
    """seed 001's eager and flash runs, the memory fit view projected onto 80 GiB (p: 24, 40, 48, 80)."""
    from tests.test_tui_snapshots import app_for, compare_before

    assert snap_compare(app_for(seed), terminal_size=(100, 30),
                        run_before=compare_before([FLASH, EAGER], ("5", "p", "p", "p", "p")))  # fmt: skip


def test_memory_fit_view_on_hostile_runs(tmp_path, utc):  # noqa: F811
    """Hostile labels, statuses and stored predictions reach the view as visible text, never as escapes."""
    import asyncio

    from tests.test_tui_snapshots import app_for, settle
    from tests.tui_support import screen_output, visible
    from tui.screens.compare import CompareScreen

    path = tmp_path / "hostile.db"
    ids = fill_hostile_store(path, hostile_id=False)
    con = sqlite3.connect(path)
    with con:
        con.execute("update cell set metrics=? where run_id=?", (json.dumps({"memory": {
            "predicted_bytes": 2 * GIB, "basis": hostile("B"), "capacity_bytes": GIB}}), ids[1]))  # fmt: skip
    con.close()

    async def main() -> str:
        app = app_for(path)
        async with app.run_test(size=(120, 60)) as pilot:
            await app.push_screen(CompareScreen(ids))
            await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
            await pilot.press("5", "p")
            await settle(pilot)
            return screen_output(app)

    out = asyncio.run(main())
    assert not leaks(out)
    text = visible(out)
    assert "projection 24 GiB" in text and "1.0 GiB card" in text
    assert "ok 2.0 ✗ →✓ !" in text and "OOM 2.0 ✗ →✓ " in text  # 2 GiB on a 1 GiB card: ran (!), OOM (agrees)


def test_interleaved_cells_are_judged_against_their_own_room(tmp_path):
    """The 2026-12-06 H100 interleaved study: eager b=2 in=8192 ran out of memory beside sdpa-flash, as the runner
    predicted from the room that cell had (79.6 GiB less the 16.1 GiB held beside it); the card stays 79.6 GiB."""
    from store.boundary import grids_of
    from store.db import open_db
    from store.results import load_results

    path = tmp_path / "interleaved.db"
    shutil.copy(ROOT / "docs/results/2026-12-06-memory/h100-interleaved.db", path)
    db = open_db(path, create=False)
    (eager,) = load_results(db, ["96c320fb"])
    db.close()
    (grid,) = grids_of(eager, 141 * GIB)
    assert round(grid.capacity / GIB, 1) == 79.6
    cell = grid.cells[(2, 8192)]
    assert (cell.status, cell.fits, cell.disagrees) == ("oom", False, False)
    assert grid.cells[(2, 4096)].fits is True and grid.counts()["disagree"] == 0
    assert cell.fits_projected is True  # alone on a 141 GiB card it would fit
