"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing written."""

import re
import sqlite3
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cli

BAD_RUNS = [
    (["--engine", "hf-nope"], "unknown engine 'hf-nope'"),
    (["--model", "nonsense"], "unknown model 'nonsense'"),
    (["--model", "./no/such/dir"], "does not exist"),
    (["--model", "/tmp/missing-model.gguf"], "does not exist"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--attention", "flash_attention_2", "--device", "cpu"], "is a CUDA kernel"),
    (["--batch", "1,x"], "'x' in '1,x' is not an integer"),
    (["--batch", "0"], "below 1"),
    (["--input-len", "-5"], "below 1"),
    (["--output-len", "0"], "below 1"),
    (["--batch", "32:32:x2"], "empty"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--repeats", "0"], "repeats"),
    (["--cell-mem-limit", "lots"], "not a size"),
    (["--study", "/nonexistent/study.json"], "does not exist"),
    # engine options are checked before the database is touched, not at load in the worker (a failed run)
    (["--engine", "llama.cpp", "--opt", "n_threads=0"], "n_threads must be a whole number from 1"),
    (["--engine", "llama.cpp", "--opt", "kv_unified=off"], "kv_unified must be true or false"),  # not a truthy string
    (["--engine", "llama.cpp", "--opt", "bogus\x1b[2J=1"], "llama.cpp has no option bogus"),
    (["--engine", "llama.cpp", "--opt", "decode_loop=fast"], "decode_loop must be auto, c or python"),
    (["--engine", "vllm", "--opt", "max_num_seqs=0"], "max_num_seqs must be >= 1"),
    (["--engine", "serve:llama.cpp", "--opt", "parallel=0"], "parallel must be a positive whole number"),
    (["--engine", "serve:vllm", "--opt", "kv_cache_gib=-1"], "kv_cache_gib must be > 0"),
    (["--engine", "serve:vllm", "--opt", "server_args=--x"], "server_args must be a list of strings"),
    (["--engine", "openai", "--model", "http://127.0.0.1:9/v1", "--opt", "timeout_s=-1"], "timeout_s must be a positive"),
    # a served engine's client options, named after the engine the user asked for
    (["--engine", "serve:llama.cpp", "--opt", "timeout_s=-1"], "serve:llama.cpp option timeout_s must be a positive"),
    (["--engine", "serve:vllm", "--opt", "prompt_format=\x1b[2Jx"], "serve:vllm option prompt_format must be auto"),
    # NaN and 1e999 pass every `<= 0` test; no engine setting means them
    (["--engine", "openai", "--model", "http://127.0.0.1:9/v1", "--opt", "timeout_s=NaN"], "not finite"),
    (["--engine", "vllm", "--opt", "kv_cache_gib=1e999"], "not finite"),
    (["--engine", "vllm", "--opt", "n\x1b]0;x\x07=[Infinity]"], "not finite"),
    (["--device", "c\npu\x1b[2J"], "unknown device 'c\\npu"),  # the newline shown, the rest of the line kept
]


def _assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in lines[0], lines[0]
    assert lines[0].startswith("codebench-tui: error:")
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\x9b]", proc.stderr), proc.stderr  # the user's escapes shown, not sent


@pytest.mark.parametrize("args, fragment", BAD_RUNS)
def test_bad_run_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    proc = cli("run", "--dry-run", *args, db=db) if "--study" in args else cli("run", *args, db=db)
    _assert_one_line_error(proc, fragment)
    assert not db.exists()


def test_corrupt_database_is_refused_untouched(tmp_path):
    db = tmp_path / "runs.db"
    db.write_bytes(b"garbage" * 1000)
    for args in (["run", "--batch", "1"], ["runs"], ["--replay", "last"], ["export", "last", "--format", "csv"]):
        _assert_one_line_error(cli(*args, db=db), "not a usable codebench database")
    assert db.read_bytes() == b"garbage" * 1000


def test_db_before_the_command_is_the_one_used(tmp_path):
    """`codebench-tui --db X run ...` once wrote to the default database: the subcommand's own --db replaced X."""
    db = tmp_path / "elsewhere.db"  # not the default database (CODEBENCH_DB, also in tmp_path)
    db.write_bytes(b"garbage" * 1000)
    for args in (["runs"], ["run", "--batch", "1"]):
        _assert_one_line_error(cli("--db", str(db), *args), "not a usable codebench database")


def test_unwritable_database_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_one_line_error(cli("run", "--batch", "1", db=blocker / "runs.db"), "writable path")


def test_reading_commands_on_missing_db(tmp_path):
    db = tmp_path / "none.db"
    _assert_one_line_error(cli("--replay", "last", db=db), "no database")
    _assert_one_line_error(cli("compare", "abc", "def", db=db), "no database")
    assert not db.exists()


def test_bad_run_refs_and_import(tmp_path):
    from store.db import open_db

    db = tmp_path / "runs.db"
    open_db(db).close()
    _assert_one_line_error(cli("--replay", "last", db=db), "no runs stored yet")
    _assert_one_line_error(cli("--replay", "zzz", db=db), "not a run id")
    _assert_one_line_error(cli("export", "abcd", "--format", "md", db=db), "no run with id 'abcd'")
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    _assert_one_line_error(cli("import", str(bad), db=db), "is not JSON")
    bad.write_text('{"a": 1}')
    _assert_one_line_error(cli("import", str(bad), db=db), "not a codebench-tui JSON export")
    _assert_one_line_error(cli("export", "last", "--format", "pdf", db=db), "invalid choice")
    assert sqlite3.connect(db).execute("select count(*) from run").fetchone()[0] == 0


def test_study_file_errors(tmp_path):
    study = tmp_path / "s.json"
    study.write_text('{"runs": [{"engine": "hf-generate"}], "grid": {"batch": "0"}}')
    _assert_one_line_error(cli("run", "--study", str(study), db=tmp_path / "r.db"), "below 1")
    study.write_text("[1, 2]")
    _assert_one_line_error(cli("run", "--study", str(study), db=tmp_path / "r.db"), "JSON object")


def test_save_study_then_run_it_dry(tmp_path):
    study = tmp_path / "s.json"
    proc = cli("run", "--engine", "hf-generate,hf-pipeline", "--batch", "1:9:x2", "--save-study", str(study),
               "--dry-run", db=tmp_path / "r.db")
    assert proc.returncode == 0, proc.stderr
    proc = cli("run", "--study", str(study), "--dry-run", db=tmp_path / "r.db")
    assert proc.returncode == 0 and "2 run(s) x 4 cells" in proc.stdout


NO_TORCH = """
import sys
for name in ("torch", "transformers", "vllm", "llama_cpp", "textual"):
    sys.modules[name] = None  # any import of them now fails
from tui.cli import main
rc = main(sys.argv[1:])
assert rc == 0, rc
"""


def test_history_paths_work_without_torch_or_textual(tmp_path):
    from store.db import open_db
    from tests.test_store import _fill

    db = tmp_path / "runs.db"
    d = open_db(db)
    _fill(d, 2)
    d.close()
    for args in (["runs"], ["--replay", "last", "--headless"], ["compare", "last", "last~1"],
                 ["export", "last", "last~1", "--format", "html"], ["engines"]):
        proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args, "--db", str(db)], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stdout.strip()
