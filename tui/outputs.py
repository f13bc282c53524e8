"""Files the CLI and the dashboard write (exports, study files): checked, then written atomically.

A mistyped path must never cost the database: the database itself or its -wal/-shm/-journal (by name
and by identity, so symlinks and hard links count), any other SQLite file, a directory, a device, pipe
or socket (os.replace would swap a device node for a regular file), and a missing folder are refused
with one line that says why.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from tui.errors import UsageError

SQLITE_MAGIC = b"SQLite format 3\x00"
DB_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def db_in_use(args: Any) -> Path:
    """The database a command uses (--db, else the default), which no file it writes may replace."""
    from store.db import default_db_path

    db = getattr(args, "db", None)
    return Path(db).expanduser() if db else default_db_path()


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing
        return False


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def check_output(path: str | Path, db: str | Path | None, flag: str = "-o") -> Path:
    """`path` if it may be written (created or replaced); else UsageError naming the problem and the fix.
    `db`: the database in use (None: none). `flag`: how the user gave the path, for the message."""
    p = Path(path).expanduser()
    where = f"{flag} {p}"
    if db is not None:
        dbp = Path(db).expanduser()
        for suffix in DB_SIDE_FILES:
            side = dbp.with_name(dbp.name + suffix)
            if _same(p, side):
                what = f"the database's {suffix} file" if suffix else "the database"
                raise UsageError(f"{where} is {what} ({side}); writing there would destroy it, choose another file")
    try:
        st = os.stat(p)  # follows symlinks: what would be replaced is what the user sees
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"cannot use {where} ({exc.strerror}); choose another path") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{where} is a directory; give a file name inside it, such as {p / 'results.txt'}")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{where} is not a regular file (a device, pipe or socket); choose a file path")
        try:
            sqlite = _is_sqlite(p)
        except OSError as exc:
            raise UsageError(f"cannot read {where} to check it is no database ({exc.strerror}); choose another file") from None
        if sqlite:
            raise UsageError(f"{where} is a SQLite database; writing there would destroy it, choose another file")
    parent = Path(os.path.abspath(p)).parent
    missing = parent
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent  # the first folder that is missing, as the user would create it
    if not parent.exists():
        raise UsageError(f"{where}: folder {missing} does not exist; create it first or choose another path")
    if not parent.is_dir():
        raise UsageError(f"{where}: {parent} is not a folder; choose another path")
    return p


def write_atomic(path: str | Path, text: str, db: str | Path | None, flag: str = "-o") -> Path:
    """Check `path`, write `text` beside it and move it into place: readers see the old file or the new one."""
    shown = check_output(path, db, flag)
    p = check_output(os.path.realpath(shown), db, flag)  # through a symlink: the file it names, the link kept
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    except OSError as exc:
        raise UsageError(f"cannot write {flag} {shown} ({exc.strerror}); choose another path") from None
    try:
        os.fchmod(fd, _mode_for(p))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        check_output(p, db, flag)  # again, just before the swap: the path may have changed meanwhile
        os.replace(tmp, p)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"cannot write {flag} {shown} ({exc.strerror}); choose another path") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return shown


def _mode_for(p: Path) -> int:
    """What a plain open() would give: the replaced file's mode, else 0o666 less the umask (mkstemp's is 0o600)."""
    try:
        return stat.S_IMODE(os.stat(p).st_mode)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:  # reading the umask without setting it (threads write too)
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o600
    return 0o666 & ~umask
