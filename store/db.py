"""Opening the database: location, schema check before any write, WAL mode."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.pool import QueuePool
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


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: read-only, or immutable where even that needs files beside it (WAL's
    -shm on a read-only mount). The path is quoted: `?` and `#` in a file name are not URI syntax."""
    err: Exception | None = None
    for mode in ("mode=ro", "immutable=1"):
        try:
            con = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, check_same_thread=False)
            con.execute("select count(*) from sqlite_master").fetchone()
            return con
        except sqlite3.DatabaseError as exc:  # "file is not a database" means the same in both modes
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreError(f"{_shown(path)} is not a usable codebench database ({exc}); move it away or pass "
                                 "--db PATH") from None  # fmt: skip
            err = exc
    raise StoreError(f"cannot open database {_shown(path)} ({err}); check permissions or pass --db PATH")


def _inspect(path: Path) -> int | None:
    """Schema version of an existing file, None if the file is empty. Never writes."""
    con = _read_only(path)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if not tables:
            return None
        if "schema_info" not in tables and tables <= OUR_TABLES and not any(
            con.execute(f"select 1 from {t} limit 1").fetchone() for t in tables
        ):
            return None  # our empty tables without the version row: a creation cut short (older versions)
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
    if pages := os.environ.get("CODEBENCH_DB_MAX_PAGES"):  # test hook: a database that fills up like a full disk
        cur.execute(f"PRAGMA max_page_count={int(pages)}")
    cur.close()


class Database:
    def __init__(self, path: Path, engine: SAEngine, read_only: bool = False):
        self.path = path
        self.engine = engine
        self.read_only = read_only  # a copy in memory of a file this process may not write

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def writable(self) -> None:
        """Raise unless writes would reach the file."""
        if self.read_only:
            raise StoreError(f"{self.path} is read-only here; copy it somewhere writable and pass --db COPY")

    def close(self) -> None:
        self.engine.dispose()


def exists(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def failure(path: Path | str, exc: BaseException) -> StoreError:
    """One line for a database that stopped taking writes (or reads): what happened and what to do."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = _shown(Path(str(path)))
    if "full" in text:
        return StoreError(f"cannot write to {where}: the disk is full (finished cells are kept); free some space and "
                          "run again")  # fmt: skip
    if "locked" in text or "busy" in text:
        return StoreError(f"{where} is locked by another program; wait for it to finish or pass --db with another file")
    if "readonly" in text or "read-only" in text:
        return StoreError(f"{where} is read-only; copy it somewhere writable and pass --db COPY")
    return StoreError(f"cannot use {where} ({text}); check the disk and the file, or pass --db with another file")


def _shown(p: Path) -> str:
    text = str(p)
    return text if len(text) <= 120 else text[:60] + "…" + text[-40:]


def _create_schema(p: Path) -> None:
    """Tables and the version row, under an exclusive lock: two processes making the same new database at
    once both end up with one whole schema (the second finds it made), and a file left empty by a kill
    mid-creation is simply made again."""
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = create_engine("sqlite://").dialect
    con = sqlite3.connect(p, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        have = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        for table in SQLModel.metadata.sorted_tables:
            if table.name not in have:
                con.execute(str(CreateTable(table).compile(dialect=dialect)))
                for index in table.indexes:
                    con.execute(str(CreateIndex(index).compile(dialect=dialect)))
        con.execute("INSERT OR IGNORE INTO schema_info (key, value) VALUES ('version', ?)", (str(SCHEMA_VERSION),))
        con.execute("COMMIT")
    finally:
        con.close()


def _memory_copy(p: Path) -> SAEngine:
    """The whole file read into memory, for a database this process may not write (a read-only mount: WAL
    would need its -shm beside it)."""
    from sqlalchemy.pool import StaticPool

    mem = sqlite3.connect(":memory:", check_same_thread=False)
    src = _read_only(p)
    try:
        src.backup(mem)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {_shown(p)} ({exc}); copy it somewhere readable and pass --db COPY") from None
    finally:
        src.close()
    return create_engine("sqlite://", creator=lambda: mem, poolclass=StaticPool)


def open_db(path: str | Path | None = None, *, create: bool = True) -> Database:
    """Open (and with `create`, make) a codebench database. Checks the schema before writing.

    Without `create` a file this process cannot write is read from a copy in memory (Database.read_only).
    """
    try:
        p = (Path(path) if path is not None else default_db_path()).expanduser()
        if p.is_dir():
            raise StoreError(f"--db {_shown(p)} is a directory; give a file path such as {_shown(p / 'runs.db')}")
        fresh = not exists(p)
    except OSError as exc:
        raise StoreError(f"--db {_shown(Path(str(path)))}: {exc.strerror or exc}; pass --db with another path") from None
    if fresh and not create:
        raise StoreError(f"no database at {_shown(p)} yet; run a benchmark first or pass --db PATH")
    version = None if fresh else _inspect(p)
    fresh = fresh or version is None  # an SQLite file with no tables: made, or left empty by a kill mid-creation
    if not create and not fresh and not (os.access(p, os.W_OK) and os.access(p.parent, os.W_OK)):
        engine = _memory_copy(p)
        if version is not None and version < SCHEMA_VERSION:
            _migrate(engine, p, version)
        return Database(p, engine, read_only=True)
    if fresh:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {_shown(p.parent)} ({exc.strerror}); pass --db with a writable path") from None
        if not os.access(p.parent, os.W_OK):
            raise StoreError(f"cannot write to {_shown(p.parent)}; pass --db with a writable path")
        try:
            _create_schema(p)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create database {_shown(p)} ({exc}); pass --db PATH") from None
    # A creator, not a URL: SQLAlchemy would read `?` in a file name as URL parameters.
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(str(p), check_same_thread=False),
                           poolclass=QueuePool)  # fmt: skip
    event.listen(engine, "connect", _on_connect)
    if version is not None and version < SCHEMA_VERSION:
        _migrate(engine, p, version)
    return Database(p, engine)


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
