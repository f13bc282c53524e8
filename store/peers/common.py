"""Building a codebench export document from another tool's figures."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from store.import_schema import EXPORT_TAG
from store.metrics import summarise
from store.models import SCHEMA_VERSION

UNKNOWN = "unknown"  # a model or device the file does not name (import --model/--device fill it in)


class PeerError(ValueError):
    """A file of a known tool that cannot be read: one line, naming the problem and the fix."""


def ident(digest: str, key: str) -> str:
    """A run or group id from the file's bytes and the run's key: the same file imports to the same ids."""
    return hashlib.sha256(f"{digest}\0{key}".encode()).hexdigest()[:32]


def num(record: dict[str, Any] | list, key: Any, where: str, kind: type = float) -> Any:
    """A field (or list item) that must be a number (CSV and SQL give text); PeerError naming it otherwise."""
    value = record[key] if isinstance(record, list) else record.get(key)
    if isinstance(value, str):
        try:
            value = kind(value) if kind is int else float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise PeerError(f"{where}: field {key!r} must be a number, got {_shown(value)}")
    return kind(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def json_lines(text: str, source: str, tool: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines output; PeerError at the first line that is not an object."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                item = json.loads(line)
            except ValueError:
                raise PeerError(f"{source}: line {n} is not JSON (a cut-short file?); run {tool} again") from None
            if not isinstance(item, dict):
                raise PeerError(f"{source}: line {n} is not a JSON object")
            out.append((n, item))
    return out


def verbatim(fields: dict[str, Any], limit: int = 4000) -> str:
    """Fields with no place in codebench's schema, kept as the tool wrote them (one note, cut to fit)."""
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(idx: int, batch: int, input_len: int, output_len: int, latencies_s: list[float], tokens: int,
         ttft_s: float | None = None, *, params: dict | None = None, peer: dict | None = None,
         at: float | None = None, decode_tps: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One cell: each of the tool's samples is a repeat, so codebench's intervals come from them; the tool's own
    figures stay under metrics.peer for the crosscheck."""
    repeats = [{"latencies_s": [t], "ttft_s": [ttft_s], "tokens": [tokens]} for t in latencies_s]
    figures = summarise(repeats, batch, output_len)
    if decode_tps is not None:
        figures["decode_tps"] = decode_tps
    out = {"idx": idx, "batch": batch, "input_len": input_len, "output_len": output_len, "params": params or {},
           "status": "done", "repeats": repeats, "metrics": {"peer": peer or {}}, "flags": [],
           "started_at": at, "finished_at": at, **figures}  # fmt: skip
    return out


def document(digest: str, name: str, created_at: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    group = ident(digest, "group")
    for run in runs:
        run["group_id"] = group
    return {"format": EXPORT_TAG, "schema_version": SCHEMA_VERSION,
            "groups": [{"id": group, "name": name[:1000], "created_at": created_at, "spec": {}}], "runs": runs}  # fmt: skip


def run(digest: str, key: str, *, tool: str, version: str, fmt: str, source: str, engine: str, model: str,
        label: str, device: str, created_at: float, cells: list[dict], config: dict | None = None,
        host: dict | None = None, notes: list[str] | None = None, spec: dict | None = None) -> dict[str, Any]:  # fmt: skip
    finished = max([created_at] + [c["finished_at"] for c in cells if c.get("finished_at")])
    return {"id": ident(digest, key), "name": None, "model": model[:4096], "engine": engine, "label": label[:4096],
            "config": {"engine": engine, **(config or {})}, "spec": spec or {}, "host": host or {},
            "runtime": {"source": {"tool": tool, "version": version, "format": fmt, "file": source[-1000:]},
                        "versions": {tool: version}},
            "device": device, "status": "done", "error": "", "created_at": created_at, "finished_at": finished,
            "cells_total": len(cells), "notes": [n[:4096] for n in notes or []], "cells": cells}  # fmt: skip
