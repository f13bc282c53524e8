"""Running the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--warmup", "0", "--iters", "1", "--repeats", "2"]


def cli(*args: str, db: Path | None = None, env: dict | None = None, timeout: float = 600, check: bool = False):
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "tui.cli", *args] + (["--db", str(db)] if db else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def popen_cli(*args: str, db: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tui.cli", *args, "--db", str(db)], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def rows(db: Path, sql: str, *params) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def cell_statuses(db: Path, run_id: str | None = None) -> list[tuple]:
    if run_id is None:
        run_id = rows(db, "select id from run order by created_at desc limit 1")[0][0]
    return rows(db, "select batch, input_len, output_len, status from cell where run_id=? order by idx", run_id)
