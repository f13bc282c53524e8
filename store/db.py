"""Opening the database: location, schema check before any write, WAL mode."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine as SAEngine
from sqlmodel import Session, SQLModel, create_engine, select

from store.models import SCHEMA_VERSION, SchemaInfo

OUR_TABLES = {"schema_info", "run_group", "run", "cell", "telemetry", "quality", "noise_floor"}


class StoreError(Exception):
    """A database that cannot be used; the message names the problem and the fix."""


def default_db_path() -> Path:
    if env := os.environ.get("CODEBENCH_DB"):
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("codebench-tui")) / "runs.db"


def _inspect(path: Path) -> int | None:
    """Schema version of an existing file, None if the file is empty. Never writes."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path} ({exc}); check permissions or pass --db PATH") from None
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if not tables:
            return None
        if "schema_info" not in tables:
            raise StoreError(
                f"{path} is a SQLite file but not a codebench database; pass --db with another path"
            )
        row = con.execute("select value from schema_info where key='version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable codebench database ({exc}); move it away or pass --db PATH") from None
    finally:
        con.close()
    if row is None or not str(row[0]).isdigit():
        raise StoreError(f"{path} has no schema version; it was not written by codebench-tui, pass --db PATH")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema v{version}, newer than this codebench-tui (v{SCHEMA_VERSION}); "
            "upgrade codebench-tui (pip install -U codebench-tui)"
        )
    if version < 1:
        raise StoreError(f"{path} has schema v{version}; no migration to v{SCHEMA_VERSION} exists")
    return version


def _columns(conn, table: str) -> set[str]:
    return {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}


def _migrate(engine: SAEngine, path: Path, version: int) -> None:
    """Additive upgrades, each step safe to repeat (SQLite commits ALTER TABLE at once): a migration
    cut short completes on the next open, and the version row moves last."""
    from store.models import NoiseFloor

    try:
        with engine.begin() as conn:
            if version < 2:
                if "notes" not in _columns(conn, "run"):
                    conn.exec_driver_sql("ALTER TABLE run ADD COLUMN notes JSON DEFAULT '[]'")
                if "flags" not in _columns(conn, "cell"):
                    conn.exec_driver_sql("ALTER TABLE cell ADD COLUMN flags JSON DEFAULT '[]'")
                SQLModel.metadata.create_all(conn, tables=[NoiseFloor.__table__])
            conn.exec_driver_sql("UPDATE schema_info SET value=? WHERE key='version'", (str(SCHEMA_VERSION),))
    except Exception as exc:
        engine.dispose()
        raise StoreError(f"{path} has schema v{version} and could not be upgraded to v{SCHEMA_VERSION} "
                         f"({exc.__class__.__name__}: {exc}); make it writable or copy it and pass --db COPY") from None


def _on_connect(dbapi_con, _record) -> None:
    cur = dbapi_con.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Database:
    def __init__(self, path: Path, engine: SAEngine):
        self.path = path
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()


def exists(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def open_db(path: str | Path | None = None, *, create: bool = True) -> Database:
    """Open (and with `create`, make) a codebench database. Checks the schema before writing."""
    p = Path(path) if path is not None else default_db_path()
    p = p.expanduser()
    if p.is_dir():
        raise StoreError(f"--db {p} is a directory; give a file path such as {p / 'runs.db'}")
    fresh = not exists(p)
    if fresh and not create:
        raise StoreError(f"no database at {p} yet; run a benchmark first or pass --db PATH")
    version = None if fresh else _inspect(p)
    if fresh:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {p.parent} ({exc.strerror}); pass --db with a writable path") from None
        if not os.access(p.parent, os.W_OK):
            raise StoreError(f"cannot write to {p.parent}; pass --db with a writable path")
    engine = create_engine(f"sqlite:///{p}", connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _on_connect)
    db = Database(p, engine)
    if version is not None and version < SCHEMA_VERSION:
        _migrate(engine, p, version)
    if fresh:
        try:
            SQLModel.metadata.create_all(engine)
            with db.session() as s:
                s.add(SchemaInfo(key="version", value=str(SCHEMA_VERSION)))
                s.commit()
        except Exception as exc:
            engine.dispose()
            raise StoreError(f"cannot create database {p} ({exc.__class__.__name__}: {exc}); pass --db PATH") from None
    return db


def memory_db() -> Database:
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    db = Database(Path(":memory:"), engine)
    with db.session() as s:
        if s.exec(select(SchemaInfo)).first() is None:
            s.add(SchemaInfo(key="version", value=str(SCHEMA_VERSION)))
            s.commit()
    return db
