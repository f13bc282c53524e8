"""The interleaved schedule end to end on tiny: order of the repeats, crashes, fall-backs, cancel, flags."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from engines.harness.interleave import Lane, oom_like, rotation
from tests.helpers import cli, popen_cli, rows

QUICK = ["--warmup", "0", "--iters", "1", "--repeats", "3"]
THREE_RUNS = {
    "model": "tiny", "grid": {"batch": [1, 2], "input_len": [16], "output_len": [4]},
    "timing": {"warmup": 0, "iters": 1, "repeats": 3},
    "runs": [{"engine": "hf-generate", "precision": "fp32", "attention": "sdpa"},
             {"engine": "hf-pipeline", "precision": "fp32", "attention": "sdpa"},
             {"engine": "hf-generate", "precision": "fp32", "attention": "eager"}],
}  # fmt: skip


def _repeats(db):
    """[(cell index, run label, round, t0, t1)] of every stored repeat."""
    out = []
    for label, idx, reps in rows(db, "select r.label, c.idx, c.repeats from cell c join run r on r.id = c.run_id"):
        out += [(idx, label, rep["round"], rep["t0"], rep["t1"]) for rep in json.loads(reps)]
    return out


def test_rotation_moves_the_first_run_each_round():
    lanes = [Lane(None, x) for x in "ABC"]  # type: ignore[arg-type]
    assert ["".join(lane.run_id for lane in rotation(lanes, r)) for r in range(4)] == ["ABC", "BCA", "CAB", "ABC"]


def test_oom_like_reads_load_failures():
    assert oom_like("MemoryError: fault injection: out of memory while loading")
    assert oom_like("worker died (killed by SIGKILL)")
    assert not oom_like("ValueError: bad gguf")


def test_repeats_are_interleaved_in_rotated_order(tmp_path):
    study = tmp_path / "three.json"
    study.write_text(json.dumps(THREE_RUNS))
    db = tmp_path / "runs.db"
    cli("run", "--study", str(study), db=db, check=True)
    labels = [r[0] for r in rows(db, "select label from run order by created_at")]
    assert [json.loads(r[0])["schedule"] for r in rows(db, "select runtime from run")] == ["interleaved"] * 3
    reps = _repeats(db)
    for idx in (0, 1):
        order = sorted((r for r in reps if r[0] == idx), key=lambda r: r[3])
        assert [(lab, rnd) for _, lab, rnd, _, _ in order] == [
            (labels[0], 0), (labels[1], 0), (labels[2], 0),
            (labels[1], 1), (labels[2], 1), (labels[0], 1),
            (labels[2], 2), (labels[0], 2), (labels[1], 2),
        ]
        # one worker generates at a time: no two repeats overlap
        assert all(a[4] <= b[3] for a, b in zip(order, order[1:]))
    # cell 1 of every run starts after cell 0 of every run ended
    assert max(r[4] for r in reps if r[0] == 0) <= min(r[3] for r in reps if r[0] == 1)


def test_a_killed_worker_crashes_its_cell_only_and_the_other_runs_go_on(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2,3", "--input-len", "16", "--output-len",
               "4", *QUICK, db=db, env={"CODEBENCH_FAULT": "kill:1@hf-pipeline"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = {(eng, idx): st for eng, idx, st in
           rows(db, "select r.engine, c.idx, c.status from cell c join run r on r.id = c.run_id")}  # fmt: skip
    assert got == {("hf-generate", 0): "done", ("hf-generate", 1): "done", ("hf-generate", 2): "done",
                   ("hf-pipeline", 0): "done", ("hf-pipeline", 1): "crashed", ("hf-pipeline", 2): "done"}  # fmt: skip
    assert "SIGKILL" in rows(db, "select error from cell where status='crashed'")[0][0]
    assert {r[0] for r in rows(db, "select status from run")} == {"done"}
    # the run that lost a worker resumed in a fresh one, still interleaved with the other
    reps = [r for r in _repeats(db) if r[0] == 2]
    assert sorted(r[2] for r in reps if r[1].startswith("hf-pipeline")) == [0, 1, 2]


def test_an_oom_at_load_falls_back_to_sequential_and_says_why(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1", "--input-len", "16", "--output-len", "4",
               *QUICK, db=db, env={"CODEBENCH_FAULT": "oomload@hf-pipeline"})  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    runs = rows(db, "select engine, status, notes, runtime, error from run order by created_at")
    assert [(r[0], r[1]) for r in runs] == [("hf-generate", "done"), ("hf-pipeline", "failed")]
    for _, _, notes, runtime, _ in runs:
        (note,) = json.loads(notes)
        assert note.startswith("schedule: sequential instead of interleaved: loading hf-pipeline")
        assert "out of memory" in note
        assert json.loads(runtime)["schedule"] == "sequential"
    assert "MemoryError" in runs[1][4]


def test_runs_that_do_not_fit_side_by_side_run_one_after_another(tmp_path, monkeypatch):
    from engines.harness.runner import Runner
    from engines.models import footprint
    from engines.study.schema import build_spec
    from store.db import open_db

    monkeypatch.setattr(footprint, "free_bytes", lambda device: 2**20)  # 1 MiB free: nothing fits
    spec = build_spec({**THREE_RUNS, "runs": THREE_RUNS["runs"][:2], "grid": {"batch": [1], "input_len": [16],
                                                                            "output_len": [4]}})  # fmt: skip
    db = open_db(tmp_path / "runs.db")
    result = Runner(spec, db).run()
    assert result.status == "done" and len(result.run_ids) == 2
    runs = rows(tmp_path / "runs.db", "select id, status, notes from run order by created_at")
    assert [r[1] for r in runs] == ["done", "done"]
    assert all("need about" in json.loads(r[2])[0] and "GiB free" in json.loads(r[2])[0] for r in runs)
    reps = _repeats(tmp_path / "runs.db")
    first = [r for r in reps if r[1].startswith("hf-generate")]
    second = [r for r in reps if r[1].startswith("hf-pipeline")]
    assert max(r[4] for r in first) <= min(r[3] for r in second)  # sequential: one run's grid, then the other's


def test_sequential_schedule_on_request(tmp_path):
    db = tmp_path / "runs.db"
    cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1", "--input-len", "16", "--output-len", "4",
        *QUICK, "--schedule", "sequential", db=db, check=True)  # fmt: skip
    assert [json.loads(r[0])["schedule"] for r in rows(db, "select runtime from run")] == ["sequential"] * 2
    assert all(json.loads(r[0]) == [] for r in rows(db, "select notes from run"))


def test_ctrl_c_under_interleaving_cancels_every_run_and_keeps_finished_cells(tmp_path):
    db = tmp_path / "runs.db"
    proc = popen_cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2,3,4,5,6", "--input-len", "16",
                     "--output-len", "16", *QUICK, db=db)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not rows_safe(db, "select count(*) from cell where status='done'"):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert [r[0] for r in rows(db, "select status from run")] == ["cancelled", "cancelled"]
    statuses = [r[0] for r in rows(db, "select status from cell")]
    assert "done" in statuses and set(statuses) <= {"done", "cancelled"}


def rows_safe(db, sql):
    try:
        return rows(db, sql)[0][0]
    except Exception:  # noqa: BLE001 - the database is being created
        return 0


def test_a_busy_loop_beside_the_worker_flags_its_cells(tmp_path):
    db = tmp_path / "runs.db"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        cli("run", "--engine", "hf-generate", "--batch", "1", "--input-len", "16", "--output-len", "8", *QUICK,
            db=db, check=True)  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    (flags,) = rows(db, "select flags from cell")[0]
    load = [f for f in json.loads(flags) if f["code"] == "load"]
    assert load and "other processes used" in load[0]["reason"]
    used = float(load[0]["reason"].split("used ")[1].split(" of")[0])
    assert used > 0.6  # the busy loop takes most of a core


@pytest.mark.parametrize("values", [("1", "2")])
def test_environment_diff_names_the_thread_setting(tmp_path, values):
    from store.db import open_db
    from store.envdiff import diff_lines
    from store.queries import list_runs
    from store.results import load_result

    db = tmp_path / "runs.db"
    for v in values:
        cli("run", "--engine", "hf-generate", "--batch", "1", "--input-len", "16", "--output-len", "4", *QUICK,
            db=db, env={"OMP_NUM_THREADS": v}, check=True)  # fmt: skip
    store = open_db(db, create=False)
    with store.session() as s:
        results = [load_result(r, session=s) for r in reversed(list_runs(session=s))]
    lines = diff_lines(results)
    assert "$OMP_NUM_THREADS: 1 | 2" in lines
    assert "torch threads: 1 | 2" in lines
    shown = cli("compare", "last~1", "last", "--no-chart", db=db, check=True, env={"COLUMNS": "200"}).stdout
    assert "$OMP_NUM_THREADS: 1 | 2" in shown and "torch threads: 1 | 2" in shown
    md = cli("export", "last~1", "last", "--format", "md", db=db, check=True).stdout
    assert "environment differs: $OMP\\_NUM\\_THREADS: 1 \\| 2" in md  # Markdown-escaped


def test_footprint_counts_a_shared_prefix_once_where_the_engine_shares_it():
    from engines import registry
    from engines.harness.interleave import fits
    from engines.models.footprint import cached_tokens, estimate
    from engines.study.grid import Cell
    from engines.study.schema import EngineRun

    cell = Cell(256, 4096 + 32, 128, (("shared_len", 4096), ("suffix_len", 32)))
    kv = {name: registry.get(name).kv_cache for name in ("noattention", "hydragen", "hf-noshare")}
    assert cached_tokens(kv["noattention"], cell) == 0
    assert cached_tokens(kv["hydragen"], cell) == 4096 + 256 * (32 + 128)
    assert cached_tokens(kv["hf-noshare"], cell) == 256 * (4096 + 32 + 128)
    runs = [EngineRun(engine=e, precision="fp16") for e in ("hydragen", "noattention")]
    gib = [estimate("codellama-7b:random", r, [cell], kv[r.engine]) / 2**30 for r in runs]
    assert 30 < gib[0] < 40 and 12 < gib[1] < 15  # 12.6 GiB of fp16 weights, 22 GiB of KV for hydragen
    assert "need about 48" in fits("codellama-7b:random", runs, [cell], "cpu") or _free_gib() > 60
    tiny = estimate("tiny", EngineRun(engine="hf-generate", precision="fp32"), [Cell(4, 128, 32)])
    assert 512 * 2**20 < tiny < 600 * 2**20  # the worker's own cost dominates a 5 M-parameter model


def _free_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30
