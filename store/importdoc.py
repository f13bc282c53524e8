"""Reading a JSON export for import: bytes with a size cap, strict UTF-8 and JSON, then the whole document
checked (store.import_schema) before any database is opened. Any problem is one ImportError_ that names
the first bad value by its JSON path, e.g. `runs[0].created_at: must be a Unix time ...`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from store.import_schema import EXPORT_TAG, MAX_TIME, document, scalar_problem, shown
from store.models import SCHEMA_VERSION

MAX_BYTES = 256 * 2**20
DOC_DEPTH = 40  # the document's own levels (runs[0].cells[0].metrics...) plus a column's FIELD_DEPTH
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
FIX = "fix the file or export the runs again with --format json"
PEERS = "llama-bench, llama-batched-bench, vllm bench serve, vllm bench throughput, AIPerf or optimum-benchmark"  # store.peers reads them


class ImportError_(ValueError):
    pass


class CheckedExport(dict):
    """A document that passed `check`: import_export need not check it again."""


def read_export(path: Path, hints: dict[str, Any] | None = None) -> CheckedExport:
    """A codebench JSON export, or the output of another tool (store.peers) as one; `hints` fill in what such a
    file lacks (input and output lengths, model, device)."""
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
    return parse_export(data, str(path), st.st_mtime, hints)


def _too_large(path: Path) -> str:
    return f"{path} is larger than {MAX_BYTES // 2**20} MiB, too large for an export; export fewer runs per file"


def _constant(name: str) -> Any:
    raise ValueError(f"holds {name}, which is not a number JSON allows")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("holds an object with the same key twice")
    return out


def parse_export(data: str | bytes, source: str, mtime: float | None = None,
                 hints: dict[str, Any] | None = None) -> CheckedExport:  # fmt: skip
    """The export in `data`, checked; ImportError_ with one line otherwise."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImportError_(f"{source} is not UTF-8 text (bad byte at offset {exc.start}); {FIX}") from None
    if peer := _peer(data, source, mtime, hints):
        return peer
    try:
        doc = json.loads(data, parse_constant=_constant, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        raise ImportError_(f"{source} is not JSON ({exc.msg} at line {exc.lineno}) nor the output of {PEERS}; export "
                           "it again with --format json") from None  # fmt: skip
    except RecursionError:
        raise ImportError_(f"{source} is nested too deeply to be an export; {FIX}") from None
    except ValueError as exc:  # the hooks above, or an integer of 4300+ digits
        why = str(exc) if str(exc).startswith("holds") else "holds an integer too large"
        raise ImportError_(f"{source} {why}; {FIX}") from None
    if hints and isinstance(doc, dict) and doc.get("format") == EXPORT_TAG:
        raise ImportError_(f"--{next(iter(hints)).replace('_', '-')} is for files of other tools ({source} is a "
                           "codebench-tui export)")  # fmt: skip
    return check(doc, source, data)


def _peer(text: str, source: str, mtime: float | None, hints: dict[str, Any] | None) -> CheckedExport | None:
    """Another tool's output (store.peers) as a checked document; None when it is not one."""
    import time

    from store.peers.detect import PeerError, read_peer

    try:
        doc = read_peer(text, source, time.time() if mtime is None else mtime, hints)
    except PeerError as exc:
        raise ImportError_(str(exc)) from None
    except RecursionError:
        raise ImportError_(f"{source} is nested too deeply to be any tool's output") from None
    if doc is None:
        return None
    tool = doc["runs"][0]["runtime"]["source"]["tool"]
    try:
        return check(doc, source)
    except ImportError_ as exc:  # a value no column can hold: the file is the tool's, so say so
        raise ImportError_(str(exc).replace(f"; {FIX}", f" (read as {tool} output); codebench cannot store it")) from None


def check(doc: Any, source: str, text: str | None = None) -> CheckedExport:
    """`doc` checked; `text`, the JSON it was parsed from, lets the scan for lone surrogates skip most documents."""
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_TAG:
        raise ImportError_(f"{source} is not a codebench-tui JSON export nor the output of {PEERS}; export one "
                           "with --format json")  # fmt: skip
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        got = f"v{version}" if isinstance(version, int) else f"version {shown(version)}"
        # v1 exports lack notes and flags only
        raise ImportError_(f"{source} has schema {got}, this codebench-tui reads v1 to v{SCHEMA_VERSION}; "
                           "export it with a matching codebench-tui")  # fmt: skip
    # Lone surrogates come only from \\u escapes (exports write emoji as escaped pairs): a text without any
    # needs no walk; the columns' own checks (import_schema.shape) cover the rest.
    if text is None or _ESCAPED_SURROGATE.search(text):
        _walk(doc, source)
    try:
        document().validate_python(doc)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ImportError_(f"{source}: {json_path(err['loc'])}: {_message(err)}; {FIX}") from None
    _cross_checks(doc, source)
    return doc if isinstance(doc, CheckedExport) else CheckedExport(doc)


def _message(err: dict) -> str:
    """pydantic's message in this tool's words; the value shown by kind, never its text (see `shown`)."""
    kind, got = err["type"], shown(err.get("input"))
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "is not a field of an export (a newer codebench-tui, or a typo?)"
    if kind == "missing":
        return "is missing"
    if kind == "import":  # ours (store.import_schema): already says what it got
        return err["msg"]
    if kind == "string_pattern_mismatch":
        return "must be a run or group id: 32 lowercase hex digits"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a JSON object, got {got}"
    if kind == "list_type":
        return f"must be a JSON array, got {got}"
    name = str(err["loc"][-1]) if err["loc"] else ""
    if ctx.get("le") == MAX_TIME or (kind == "greater_than_equal" and (name in ("t", "owner_started") or name.endswith("_at"))):
        return f"must be a Unix time in seconds from 0 to {MAX_TIME:.0f} (1970 to 2100), got {got}"
    text = re.sub(r"^(Input|String|List|Dictionary|Value) should", "must", err["msg"])
    return text if kind.startswith(("too_long", "string_too_long")) else f"{text}, got {got}"


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
    """Anywhere in the document: depth, string sizes, lone surrogates (SQLite cannot store them), numbers
    no column can hold. A fast pass; a second one, which knows the path, when the first finds something."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        item, depth = stack.pop()
        if _bad(item, depth):
            return _find(doc, source)
        if type(item) is dict:
            stack.extend((v, depth + 1) for v in item.values())
        elif type(item) is list:
            stack.extend((v, depth + 1) for v in item)


def _bad(v: Any, depth: int) -> str:
    """Why a value cannot be imported (for a container: its keys and depth only); "" if it can."""
    kind = type(v)
    if kind is dict or kind is list:
        if depth >= DOC_DEPTH:
            return f"is nested more than {DOC_DEPTH} levels deep"
        return next((f"{why} in a key" for k in v if (why := scalar_problem(k))), "") if kind is dict else ""
    return scalar_problem(v)


def _find(doc: Any, source: str) -> None:
    stack: list[tuple[Any, tuple]] = [(doc, ())]
    while stack:
        item, loc = stack.pop()
        if why := _bad(item, len(loc)):
            raise ImportError_(f"{source}: {json_path(loc)}: {why}; {FIX}")
        if isinstance(item, dict):
            stack.extend((v, loc + (k,)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, loc + (i,)) for i, v in enumerate(item))


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
