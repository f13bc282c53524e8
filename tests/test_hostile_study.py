"""Hostile and careless input to studies, and a database that fails under a run: one line, exit 2, nothing lost."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ROOT, cli, popen_cli, rows

QUICK = ["--warmup", "0", "--iters", "1", "--repeats", "1"]


def _one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


# --- the grid and numbers (findings 7, 8) -----------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["--batch", "1:4097", "--input-len", "1:4097"], "more than 10,000"),
    (["--batch", "1:4097", "--input-len", "1:4097", "--output-len", "1:4097"], "more than 10,000"),
    (["--input-len", "99999999999999999999"], "above 10,000,000"),
    (["--input-len", "1:99999999999"], "more than 4096 values"),  # never listed whole
    (["--batch", "2000000"], "above 1,000,000"),
    (["--repeats", "10000000000000000000000000"], "repeats"),
    (["--cell-timeout", "nan"], "cell_timeout_s"),
    (["--cell-timeout", "-1"], "cell_timeout_s"),
    (["--cell-mem-limit", "1B"], "cell_mem_limit_bytes"),
    (["--cell-mem-limit", "99999999TiB"], "--cell-mem-limit"),
    (["--seed", "-1"], "seed"),
    (["--load-timeout", "inf"], "load_timeout_s"),
    (["--engine", ""], "names nothing"),
    (["--precision", ","], "names nothing"),
    (["--model", ""], "empty"),
])  # fmt: skip
def test_absurd_numbers_and_empty_flags_are_one_line_errors(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    started = time.monotonic()
    proc = cli("run", *args, "--dry-run", db=db, timeout=60)
    _one_line_error(proc, fragment)
    assert time.monotonic() - started < 30, "planning an absurd grid must not take long"
    assert not db.exists()


@pytest.mark.parametrize("content, fragment", [
    (b"null", "must hold a JSON object"),
    (b"{}", "runs"),
    (b"[Infinity]", "not valid JSON"),
    (b'{"runs": [{"engine": "hf-generate"}], "timing": {"repeats": 1e25}}', "repeats"),
    (b'{"runs": [{"engine": "hf-generate"}], "grid": {"batch": [1, 2.5]}}', "not a whole number"),
    (b'{"runs": [{"engine": "hf-generate"}], "grid": {"batch": ' + json.dumps(list(range(1, 5000))).encode() + b"}}",
     "at most 4096"),
    (b'{"runs": []}', "at least one run"),
    (b"\xff\xfe\x00garbage\x00\x01", "not UTF-8"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b'{"runs": [{"engine": "hf-generate"}], "worker_env": {"BAD NAME": "1"}}', "not an environment variable name"),
], ids=["null", "empty", "infinity", "1e25", "float-batch", "long-list", "no-runs", "binary", "deep", "env-name"])  # fmt: skip
def test_study_files_of_any_content_give_one_line(tmp_path, content, fragment):
    study = tmp_path / "study.json"
    study.write_bytes(content)
    db = tmp_path / "runs.db"
    proc = cli("run", "--study", str(study), "--dry-run", db=db, timeout=60)
    _one_line_error(proc, fragment)
    assert not db.exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
                       st.text(max_size=20), st.booleans(), st.none(), st.lists(st.integers(), max_size=3)),
       field=st.sampled_from([("timing", "repeats"), ("timing", "iters"), ("timing", "warmup"), ("grid", "batch"),
                              ("grid", "input_len"), ("grid", "output_len"), ("", "cell_timeout_s"),
                              ("", "cell_mem_limit_bytes"), ("", "load_timeout_s"), ("workload", "seed")]))  # fmt: skip
def test_any_number_in_a_study_is_checked_before_anything_runs(value, field):
    """In-process: build_spec either accepts a value a worker can run, or raises SpecError (one line)."""
    from engines.base import SpecError
    from engines.study.grid import MAX_CELLS
    from engines.study.schema import build_spec

    data: dict = {"runs": [{"engine": "hf-generate"}]}
    section, key = field
    (data.setdefault(section, {}) if section else data)[key] = value
    try:
        spec = build_spec(data)
    except SpecError as exc:
        assert "\n" not in str(exc).strip() and str(exc).strip()
        return
    t = spec.timing
    assert 1 <= t.repeats <= 10_000 and 1 <= t.iters <= 10_000 and 0 <= t.warmup <= 1000
    assert spec.grid is not None and spec.grid.count() <= MAX_CELLS
    assert all(1 <= v <= 10_000_000 for axis in (spec.grid.batch, spec.grid.input_len, spec.grid.output_len) for v in axis)
    assert 0 <= spec.workload.seed < 2**32
    for limit in (spec.cell_timeout_s, spec.load_timeout_s):
        assert limit is None or 0 < limit <= 30 * 86400
    assert spec.cell_mem_limit_bytes is None or 64 * 2**20 <= spec.cell_mem_limit_bytes <= 2**50


# --- models a worker would trip over (finding 12) ----------------------------------------------


def test_a_corrupt_or_foreign_model_is_refused_before_any_worker(tmp_path):
    db = tmp_path / "runs.db"
    rand = tmp_path / "random.gguf"
    rand.write_bytes(os.urandom(4096))
    _one_line_error(cli("run", "--model", str(rand), "--engine", "llama.cpp", "--dry-run", db=db), "not a GGUF file")
    header = tmp_path / "header.gguf"
    header.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + os.urandom(4096))
    _one_line_error(cli("run", "--model", str(header), "--engine", "llama.cpp", "--dry-run", db=db), "corrupt")
    _one_line_error(cli("run", "--model", str(header), "--engine", "hf-generate", "--dry-run", db=db),
                    "cannot read the GGUF file")  # fmt: skip
    bad_dir = tmp_path / "model"
    bad_dir.mkdir()
    (bad_dir / "config.json").write_text("{not json")
    _one_line_error(cli("run", "--model", str(bad_dir), "--dry-run", db=db), "not a readable JSON model config")
    (bad_dir / "config.json").write_text('{"hidden_size": 4}')
    _one_line_error(cli("run", "--model", str(bad_dir), "--dry-run", db=db), "no model_type")
    assert not db.exists()


def test_cuda_without_a_gpu_is_refused_up_front(tmp_path):
    from engines.measure.hardware import gpus

    if gpus():
        pytest.skip("this machine has a GPU")
    proc = cli("run", "--device", "cuda", "--dry-run", db=tmp_path / "runs.db")
    _one_line_error(proc, "--device cuda", "no GPU")


@pytest.mark.parametrize("flag,value,fragment", [
    ("--executor", "ray://h:\u00b2", "unknown executor"),
    ("--executor", "ray?cpus=\u00b2", "cpus must be a whole number"),
    ("--device", "cuda:\u00b2", "device"),
])  # fmt: skip
def test_digits_python_calls_digits_but_int_refuses(tmp_path, flag, value, fragment):
    """'\u00b2' passes str.isdigit but not int(): a one-line error, not a traceback."""
    _one_line_error(cli("run", flag, value, "--dry-run", db=tmp_path / "runs.db"), fragment)


def test_flash_with_a_shorter_sliding_window_is_refused_before_loading(monkeypatch):
    from engines.base import SpecError
    from engines.harness.preflight import check_window
    from engines.study.schema import build_spec

    spec = build_spec({"model": "starcoder2-7b:random", "runs": [{"engine": "hf-generate", "attention": "sdpa-flash"}],
                       "grid": {"batch": [1], "input_len": [8192], "output_len": [16]}})  # fmt: skip
    with pytest.raises(SpecError, match="4096-token sliding window"):
        check_window(spec, spec.runs[0], "cuda")
    check_window(spec, spec.runs[0].model_copy(update={"options": {"sliding_window": None}}), "cuda")  # the fix it names
    short = spec.model_copy(update={"grid": spec.grid.model_copy(update={"input_len": [1024]})})
    check_window(short, spec.runs[0], "cuda")


# --- outcomes (finding 12) -------------------------------------------------------------------


def test_a_run_whose_every_cell_failed_is_failed_and_the_study_exits_1(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1,2", "--input-len", "8", "--output-len", "2",
               *QUICK, "--schedule", "sequential", db=db, env={"CODEBENCH_FAULT": "kill:0@hf-pipeline"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # one crashed cell of two: the run is done, with a crashed cell
    db2 = tmp_path / "all.db"
    proc = cli("run", "--engine", "hf-generate", "--batch", "1", "--input-len", "8", "--output-len", "2", *QUICK,
               db=db2, env={"CODEBENCH_FAULT": "kill:0"})  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (status, error), = rows(db2, "select status, error from run")
    assert status == "failed" and error.startswith("every cell crashed: worker died (killed by SIGKILL)"), error
    assert "run hf-generate fp32 sdpa failed" in proc.stderr and "Traceback" not in proc.stderr


def test_stored_errors_are_one_line_without_this_machines_paths(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "hf-generate", "--opt", "layers=2", "--batch", "1", "--input-len", "8",
               "--output-len", "2", *QUICK, db=db)  # fmt: skip
    assert proc.returncode == 1
    (error,), = rows(db, "select error from run")
    assert "\n" not in error and str(ROOT) not in error and "Traceback" not in error, error
    assert "layers applies to random presets" in error


# --- the database under a run (finding 9) --------------------------------------------------------


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_finished_cells(tmp_path):
    db = tmp_path / "full.db"
    # SQLite's own limit on pages fails writes exactly as a full disk does (SQLITE_FULL)
    proc = cli("run", "--engine", "hf-generate", "--batch", "1,2,3,4,5,6,7,8", "--input-len", "8", "--output-len",
               "2", *QUICK, db=db, env={"CODEBENCH_DB_MAX_PAGES": "14"})  # fmt: skip
    _one_line_error(proc, "the disk is full", "finished cells are kept")
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    done = con.execute("select count(*) from cell where status='done'").fetchone()[0]
    con.close()
    assert 0 < done < 8
    listing = cli("runs", db=db, check=True).stdout
    assert "interrupted" in listing or "failed" in listing


def test_a_database_locked_by_another_writer_is_one_line(tmp_path):
    db = tmp_path / "runs.db"
    cli("run", "--batch", "1", "--input-len", "8", "--output-len", "2", *QUICK, db=db, check=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('begin immediate'); print('locked', flush=True); time.sleep(60)"), str(db)],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli("run", "--batch", "1", "--input-len", "8", "--output-len", "2", *QUICK, db=db, timeout=120)
        _one_line_error(proc, "is locked by another program")
        assert "2 run" not in cli("runs", db=db, check=True).stdout  # reading still works
    finally:
        holder.kill()
        holder.wait()


def test_two_first_runs_creating_one_database_both_succeed(tmp_path):
    code = "import sys; from store.db import open_db; open_db(sys.argv[1]).close()"
    for attempt in range(8):
        path = tmp_path / f"new-{attempt}.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]  # fmt: skip
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        con = sqlite3.connect(path)
        assert con.execute("select value from schema_info").fetchall() == [("2",)]
        con.close()


def test_an_sqlite_file_with_no_tables_is_made_into_a_database(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).execute("pragma user_version=1").connection.close()  # a valid file, no tables
    assert path.stat().st_size > 0
    cli("run", "--batch", "1", "--input-len", "8", "--output-len", "2", *QUICK, db=path, check=True)
    assert rows(path, "select status from run") == [("done",)]


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot write: a read-only tmpfs as root (root ignores file modes), modes otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        yield folder, lambda: (folder.chmod(0o555), [p.chmod(0o444) for p in folder.iterdir()])
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("as root only a read-only filesystem refuses writes, and mount is not permitted here")
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_database_on_a_read_only_filesystem_can_be_read(read_only_folder):
    from tests.tui_support import fill_store

    folder, make_read_only = read_only_folder
    path = folder / "runs.db"
    fill_store(path, runs=2)
    make_read_only()
    for args in (["runs"], ["compare", "last~1", "last", "--no-chart"], ["--replay", "last", "--headless"],
                 ["export", "last", "--format", "csv"]):
        proc = cli(*args, db=path)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    proc = cli("import", str(path), db=path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["runs.db"], "nothing written beside it"


def test_deleting_a_running_run_is_refused_and_the_study_goes_on(tmp_path):
    from store.db import StoreError, open_db
    from store.queries import delete_runs

    db = tmp_path / "runs.db"
    proc = popen_cli("run", "--batch", "1,2,3,4,5,6", "--input-len", "16", "--output-len", "16", *QUICK, db=db)
    deadline = time.monotonic() + 240
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        time.sleep(0.3)
        try:
            found = rows(db, "select id from run where status='running'")
        except sqlite3.OperationalError:
            continue
        run_id = found[0][0] if found else None
    assert run_id, proc.communicate()
    store = open_db(db, create=False)
    with store.session() as s, pytest.raises(StoreError, match="still running"):
        delete_runs([run_id], session=s)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert rows(db, "select status from run") == [("done",)]


@pytest.mark.parametrize("args, fragment", [
    (["--replay", ""], "not a run id"),
    (["runs", "--limit", "1e30"], "whole number"),
    (["runs", "--limit", "99999999999999999999"], "whole number"),
])  # fmt: skip
def test_careless_history_flags(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    cli("run", "--batch", "1", "--input-len", "8", "--output-len", "2", *QUICK, db=db, check=True)
    proc = cli(*args, db=db)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_a_5000_character_db_path_is_one_line(tmp_path):
    proc = cli("runs", "--db", str(tmp_path / ("x" * 5000)))
    _one_line_error(proc, "--db")


NUMERIC_FLAGS = ["--batch", "--input-len", "--output-len", "--warmup", "--iters", "--repeats", "--cell-timeout",
                 "--load-timeout", "--cell-mem-limit", "--seed", "--tp", "--window", "--stride", "--problems",
                 "--samples", "--k", "--temperature", "--max-new-tokens", "--shared-len", "--completions"]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flag=st.sampled_from(NUMERIC_FLAGS),
       value=st.one_of(st.integers(min_value=-(2**80), max_value=2**80).map(str),
                       st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.sampled_from(["1e25", "-0", "0x10", "1_000", " 3 ", "nan", "inf", "1:4097", "1:10**9:x2",
                                        "4096:1:x2", "1,,2", "٣", "1e-300", "9" * 400, "2GiB", "1:2:0"]),
                       st.text(max_size=12)))  # fmt: skip
def test_any_value_of_a_numeric_flag_is_refused_in_one_line_or_runs(flag, value):
    """argparse, the spec and the grid together: a value either becomes a study a worker can run, or an error
    of one line (argparse's exit 2 or the CLI's known errors) before anything is written."""
    from engines.base import SpecError
    from engines.study.grid import MAX_CELLS, GridError
    from tui.cli import build_parser
    from tui.commands.run import spec_from_args
    from tui.errors import UsageError

    extra = ["--workload", "shared-prefix"] if flag in ("--shared-len", "--completions") else []
    extra += ["--quality", "pass@k"] if flag in ("--problems", "--samples", "--k", "--temperature",
                                                 "--max-new-tokens") else []  # fmt: skip
    extra += ["--quality", "perplexity"] if flag in ("--window", "--stride") else []
    argv = ["run", *extra, flag, value]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        return
    try:
        spec = spec_from_args(args)
    except (SpecError, UsageError, GridError) as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), repr(str(exc))
        return
    assert spec.grid is None or spec.grid.count() <= MAX_CELLS
    assert 1 <= spec.timing.repeats <= 10_000 and spec.timing.warmup <= 1000
    if spec.cell_mem_limit_bytes is not None:
        assert 64 * 2**20 <= spec.cell_mem_limit_bytes <= 2**50
