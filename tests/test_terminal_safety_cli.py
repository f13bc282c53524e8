"""Hostile data in every CLI output: escape sequences never reach the terminal, markup is never interpreted, a
100 kB name is cut to a bounded width, and every command that succeeds exits 0.

The data comes from tests.tui_support.fill_hostile_store; `leaks` finds control characters the app did not write
itself. The strings' tags (N0, L0, ...) say which field a piece of output came from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FAST, cli
from tests.tui_support import ESCAPES, fill_hostile_store, hostile, leaks, utc, visible  # noqa: F401  (fixture)


@pytest.fixture
def hostile_db(tmp_path, utc):  # noqa: F811
    path = tmp_path / "hostile.db"
    return path, fill_hostile_store(path)


def assert_clean(out: str, *must_show: str) -> None:
    found = leaks(out)
    assert not found, f"{len(found)} control characters reached the terminal, e.g. {found[:4]}"
    text = visible(out)
    for piece in must_show:
        assert piece in text, f"{piece!r} is not shown as written"


# --- the command line -------------------------------------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch):
    """Rich writes as to a colour terminal 160 columns wide, as a user's would."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("LINES", "50")
    monkeypatch.delenv("NO_COLOR", raising=False)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    from tui.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_runs(hostile_db, terminal, capsys):
    path, _ = hostile_db
    code, out = run_cli(capsys, "runs", "--db", str(path))
    assert code == 0
    assert_clean(out, "N0[bold", "L0[link=https://ev", "RS[/]␛")
    assert max(len(line) for line in visible(out).splitlines()) <= 160


@pytest.mark.parametrize("metric", ["tokens_per_s", "peak_mem"])
def test_compare(hostile_db, terminal, capsys, metric):
    path, _ = hostile_db
    code, out = run_cli(capsys, "compare", "last", "last~1", "last~2", "--metric", metric, "--db", str(path))
    assert code == 0
    assert_clean(out, "␛", "…")
    assert len(out) < 60_000, "a 100 kB name or note was printed whole"


@pytest.mark.parametrize("which", ["last", "last~1", "last~2"])
def test_replay_headless(hostile_db, terminal, capsys, which):
    path, _ = hostile_db
    code, out = run_cli(capsys, "--replay", which, "--headless", "--db", str(path))
    assert code == 0
    assert_clean(out, "␛")
    assert len(out) < 60_000


def test_export_markdown_tables(hostile_db, terminal, capsys):
    """The tables of a Markdown export come from store.tables.Table: sanitised there."""
    path, _ = hostile_db
    code, out = run_cli(capsys, "export", "last", "last~1", "last~2", "--format", "md", "--db", str(path))
    assert code == 0
    tables = out[out.index("\n**") :]
    assert_clean(tables, "␛")
    assert len(tables) < 60_000


def test_export_markdown_whole(hostile_db, terminal, capsys):
    path, _ = hostile_db
    code, out = run_cli(capsys, "export", "last", "last~1", "last~2", "--format", "md", "--db", str(path))
    assert code == 0
    assert_clean(out)


def test_engines_and_models(terminal, capsys):
    for argv in (["engines", "--device", "cpu"], ["models"]):
        code, out = run_cli(capsys, *argv)
        assert code == 0
        assert_clean(out)


def test_noise_report(hostile_db, terminal, capsys):
    """`noise`'s closing lines name the host and the label."""
    from rich.console import Console

    from tui.commands.noise import report

    path, ids = hostile_db
    import sqlite3

    con = sqlite3.connect(path)
    with con:
        con.execute("update run set status='done'")
    con.close()
    console = Console()
    assert report(console, str(path), ids[:2]) == 0
    out = capsys.readouterr()
    assert_clean(out.out + out.err, "H0[/]", "L0[link=https://evil]")


def test_error_line_is_shown_safely(tmp_path, terminal, capsys):
    """The one-line error echoes what was given (here a study file's contents)."""
    study = tmp_path / "study.json"
    study.write_text('{"model": "tiny", "runs": [{"engine": "hf-generate", "precision": "' + "[/]\\u001b]0;t\\u0007"
                     + '"}]}')  # fmt: skip
    code, out = run_cli(capsys, "run", "--dry-run", "--study", str(study), "--db", str(tmp_path / "x.db"))
    assert code == 2
    assert_clean(out, "[/]")


@pytest.fixture
def hostile_model(tmp_path, tiny_model) -> Path:
    """The tiny model's directory under a path full of markup and escapes."""
    model = tmp_path / "m[" / ("][bold red]" + ESCAPES.replace("\x00", "").replace("/", "|") + "tiny")
    model.parent.mkdir()
    model.symlink_to(tiny_model, target_is_directory=True)
    return model


def test_run_plan(hostile_model, tmp_path, terminal, capsys):
    code, out = run_cli(capsys, "run", "--dry-run", "--model", str(hostile_model), "--name", hostile("NAME"),
                        "--batch", "1", "--db", str(tmp_path / "x.db"))  # fmt: skip
    assert code == 0
    assert_clean(out, "m[/][bold red]␛")


def test_run_end_to_end(hostile_model, tmp_path):
    """A real run of tiny: the model path, the name and the database path are hostile; progress on a terminal."""
    db_dir = tmp_path / "db[" / "][link=https://evil]x[/link]"
    db_dir.mkdir(parents=True)
    name = hostile("NAME").replace("\x00", "")  # an argument cannot hold NUL
    proc = cli("run", "--model", str(hostile_model), "--name", name, "--batch", "1", "--input-len", "8",
               "--output-len", "2", *FAST, db=db_dir / "r.db", env={"FORCE_COLOR": "1", "COLUMNS": "160"},
               timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_clean(proc.stdout + proc.stderr, "stored in", "db[/][link=https:/evil]x[/link]")  # pathlib folds //
    proc = cli("runs", db=db_dir / "r.db", env={"FORCE_COLOR": "1", "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_clean(proc.stdout + proc.stderr, "NAME[/]")
