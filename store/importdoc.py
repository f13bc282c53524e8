"""Reading a JSON export for import: bytes with a size cap, strict UTF-8 and JSON, then the whole document
checked (store.import_schema) before any database is opened. Any problem is one ImportError_ that names
the first bad value by its JSON path, e.g. `runs[0].created_at: must be a Unix time ...`.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from store.import_schema import EXPORT_TAG, Document, shown
from store.models import SCHEMA_VERSION

MAX_BYTES = 256 * 2**20
DOC_DEPTH = 40  # the document's own levels (runs[0].cells[0].metrics...) plus a column's FIELD_DEPTH
MAX_STRING = 1_000_000
MAX_INT_DIGITS = 100  # fields check their own ranges; this stops giant integers (Python refuses 4300+ digits)
FIX = "fix the file or export the runs again with --format json"


class ImportError_(ValueError):
    pass


class CheckedExport(dict):
    """A document that passed `check`: import_export need not check it again."""


def read_export(path: Path) -> CheckedExport:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > MAX_BYTES:
                raise ImportError_(_too_large(path))
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ImportError_(f"cannot read {path} ({exc.strerror}); give the path of a JSON export") from None
    if len(data) > MAX_BYTES:
        raise ImportError_(_too_large(path))
    return parse_export(data, str(path))


def _too_large(path: Path) -> str:
    return f"{path} is larger than {MAX_BYTES // 2**20} MiB, too large for an export; export fewer runs per file"


def _constant(name: str) -> Any:
    raise ValueError(f"holds {name}, which is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"holds a number too large for a float ({text[:24]})")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"holds an integer too large ({len(text)} digits)")
    return int(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("holds an object with the same key twice")
    return out


def parse_export(data: str | bytes, source: str) -> CheckedExport:
    """The export in `data`, checked; ImportError_ with one line otherwise."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImportError_(f"{source} is not UTF-8 text (bad byte at offset {exc.start}); {FIX}") from None
    try:
        doc = json.loads(data, parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        raise ImportError_(f"{source} is not JSON ({exc.msg} at line {exc.lineno}); export it again with --format json") from None
    except RecursionError:
        raise ImportError_(f"{source} is nested too deeply to be an export; {FIX}") from None
    except ValueError as exc:  # the hooks above
        raise ImportError_(f"{source} {exc}; {FIX}") from None
    return check(doc, source)


def check(doc: Any, source: str) -> CheckedExport:
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_TAG:
        raise ImportError_(f"{source} is not a codebench-tui JSON export; export one with --format json")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        got = f"v{version}" if isinstance(version, int) else f"version {shown(version)}"
        # v1 exports lack notes and flags only
        raise ImportError_(f"{source} has schema {got}, this codebench-tui reads v1 to v{SCHEMA_VERSION}; "
                           "export it with a matching codebench-tui")  # fmt: skip
    _walk(doc, source)
    try:
        Document.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        raise ImportError_(f"{source}: {json_path(err['loc'])}: {_message(err)}; {FIX}") from None
    _cross_checks(doc, source)
    return doc if isinstance(doc, CheckedExport) else CheckedExport(doc)


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "is not a field of an export (a newer codebench-tui, or a typo?)"
    if err["type"] == "missing":
        return "is missing"
    return err["msg"][0].lower() + err["msg"][1:] if err["msg"] else err["type"]


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def json_path(loc: tuple | list) -> str:
    """('runs', 0, 'created_at') -> runs[0].created_at; odd keys quoted (repr escapes control characters)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.match(part) and len(part) <= 64:
            out += ("." if out else "") + part
        else:
            key = repr(part)
            out += f"[{key if len(key) <= 40 else key[:39] + '…'}]"
        if len(out) > 160 and i < len(loc) - 1:
            return out + "…"
    return out or "the document"


def _walk(doc: Any, source: str) -> None:
    """Depth, string sizes and lone surrogates (SQLite cannot store them) anywhere, without recursion."""
    stack: list[tuple[Any, tuple]] = [(doc, ())]
    while stack:
        item, loc = stack.pop()
        if len(loc) > DOC_DEPTH:
            raise ImportError_(f"{source}: {json_path(loc)}: is nested more than {DOC_DEPTH} levels deep; {FIX}")
        if isinstance(item, str):
            _string(item, loc, source)
        elif isinstance(item, dict):
            for key, value in item.items():
                _string(key, loc + (key,), source)
                stack.append((value, loc + (key,)))
        elif isinstance(item, list):
            stack.extend((value, loc + (i,)) for i, value in enumerate(item))


def _string(text: str, loc: tuple, source: str) -> None:
    if len(text) > MAX_STRING:
        raise ImportError_(f"{source}: {json_path(loc)}: holds a string of {len(text)} characters, "
                           f"more than {MAX_STRING}; {FIX}")  # fmt: skip
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ImportError_(f"{source}: {json_path(loc)}: holds a lone UTF-16 surrogate (not text); {FIX}") from None


def _cross_checks(doc: dict, source: str) -> None:
    """What one field cannot say alone: ids unique in the document, nothing finished before it started."""
    for kind in ("groups", "runs"):
        first: dict[str, int] = {}
        for i, item in enumerate(doc.get(kind) or []):
            if item["id"] in first:
                raise ImportError_(f"{source}: {kind}[{i}].id: the same id as {kind}[{first[item['id']]}]; "
                                   "each must appear once")  # fmt: skip
            first[item["id"]] = i
    for i, run in enumerate(doc.get("runs") or []):
        if run.get("finished_at") is not None and run["finished_at"] < run["created_at"]:
            raise ImportError_(f"{source}: runs[{i}].finished_at: is before created_at; {FIX}")
        for j, cell in enumerate(run.get("cells") or []):
            if None not in (cell.get("started_at"), cell.get("finished_at")) and cell["finished_at"] < cell["started_at"]:
                raise ImportError_(f"{source}: runs[{i}].cells[{j}].finished_at: is before started_at; {FIX}")
