"""llama.cpp's llama-bench output (-o json, jsonl, csv or sql) as codebench runs: one run per configuration
(every field but the test's), one cell per test.

- pp N (prompt only) is a cell of input N and output 1: its latency is the prompt's, as codebench's TTFT.
- tg N (generation only) is a cell of output N: all of it is decode, as llama-bench times it from an empty
  context (or after n_depth tokens, a `n_depth` parameter of the cell).
- pg N,M is a cell of input N and output M; codebench's tok/s counts the M generated tokens, llama-bench's
  t/s counts N + M (kept under metrics.peer).

Each repetition in samples_ns (json, jsonl) is a repeat, so codebench's intervals come from them. CSV and SQL
output keep only the mean and standard deviation: one repeat, no interval, and a note saying so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from datetime import datetime
from typing import Any

from store.peers.common import PeerError, cell, document, json_lines, num, run, verbatim

TOOL = "llama-bench"
TEST_FIELDS = ("n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
               "samples_ns", "samples_ts")  # fmt: skip
OPTIONS = ("n_threads", "n_batch", "n_ubatch", "n_gpu_layers", "flash_attn", "type_k", "type_v")  # the engine's names
SHOWN = ("model_filename", "model_type", "model_size", "model_n_params", "build_commit", "build_number", "cpu_info",
         "gpu_info", "backends")  # fmt: skip
MAX_RECORDS = 100_000
_FLASH = {-1: "auto", 0: "off", 1: "on"}


def sniff(text: str) -> str | None:
    """The output format of `text` if llama-bench wrote it."""
    head = text.lstrip()[:4000]
    if head.startswith("CREATE TABLE IF NOT EXISTS llama_bench"):
        return "sql"
    if head.startswith("build_commit,") and ",avg_ns," in head.split("\n", 1)[0]:
        return "csv"
    if head.startswith("[") and re.search(r'"avg_ns"\s*:', head) and re.search(r'"n_gen"\s*:', head):
        return "json"
    if head.startswith("{") and '"avg_ns"' in head.split("\n", 1)[0] and '"n_gen"' in head.split("\n", 1)[0]:
        return "jsonl"
    return None


def records(text: str, fmt: str, source: str) -> list[dict[str, Any]]:
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PeerError(f"{source} is llama-bench JSON cut short or damaged ({exc}); run llama-bench again") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise PeerError(f"{source}: llama-bench JSON must be an array of objects")
        return data
    if fmt == "jsonl":
        return [item for _, item in json_lines(text, source, TOOL)]
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        head, body = rows[0], [r for r in rows[1:] if r]
        for n, row in enumerate(body, 2):
            if len(row) != len(head):
                raise PeerError(f"{source}: CSV line {n} has {len(row)} fields, the header {len(head)} (cut short?)")
        return [dict(zip(head, row)) for row in body]
    return _sql(text, source)


_INSERT = re.compile(r"INSERT INTO llama_bench \(([a-z_, ]+)\) VALUES \(")


def _sql(text: str, source: str) -> list[dict[str, Any]]:
    """llama-bench's SQL read as data, never run: its CREATE TABLE, then INSERT statements of quoted values."""
    create_end = text.find(");")
    if create_end < 0:
        raise PeerError(f"{source}: llama-bench SQL without the end of its CREATE TABLE (cut short?)")
    out, pos = [], create_end + 2
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        m = _INSERT.match(text, pos)
        if not m:
            raise PeerError(f"{source}: llama-bench SQL holds a statement that is not its INSERT at offset {pos}; "
                            "only llama-bench's own -o sql output is read")  # fmt: skip
        cols = [c.strip() for c in m.group(1).split(",")]
        values, pos = _values(text, m.end(), source)
        if len(values) != len(cols):
            raise PeerError(f"{source}: an INSERT at offset {m.start()} has {len(values)} values for {len(cols)} columns")
        out.append(dict(zip(cols, values)))


def _values(text: str, pos: int, source: str) -> tuple[list[str], int]:
    """'a', 'b''c', ... ); -> the values, and the offset after the statement."""
    values = []
    while True:
        if text.startswith("'", pos):
            end, parts = pos + 1, []
            while True:
                q = text.find("'", end)
                if q < 0:
                    raise PeerError(f"{source}: a quoted SQL value never ends (cut short?)")
                parts.append(text[end:q])
                if text.startswith("''", q):
                    parts.append("'")
                    end = q + 2
                    continue
                pos = q + 1
                break
            values.append("".join(parts))
        else:
            m = re.compile(r"-?[0-9.eE+-]+|NULL").match(text, pos)
            if not m:
                raise PeerError(f"{source}: an SQL value at offset {pos} is neither quoted nor a number")
            values.append(m.group(0))
            pos = m.end()
        if text.startswith(", ", pos):
            pos += 2
        elif text.startswith(");", pos):
            return values, pos + 2
        else:
            raise PeerError(f"{source}: an INSERT at offset {pos} does not end with ');' (cut short?)")


def _time(value: Any, where: str) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise PeerError(f"{where}: test_time {str(value)[:40]!r} is not an ISO time") from None


def _device(rec: dict[str, Any]) -> str:
    backends = [b.strip() for b in str(rec.get("backends", "CPU")).split(",") if b.strip()]
    gpu = [b for b in backends if b not in ("CPU", "BLAS", "RPC")]
    layers = rec.get("n_gpu_layers")
    if not gpu or str(layers) == "0":
        return "cpu"
    return f"cuda:{rec.get('main_gpu', 0)}" if gpu[0] == "CUDA" else gpu[0].lower()[:40]


def _quant(model_type: Any) -> str | None:
    last = str(model_type or "").split()[-1:] or [""]
    return last[0].lower() if re.fullmatch(r"[A-Za-z0-9_]{1,20}", last[0]) else None


def _options(rec: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in OPTIONS:
        if key not in rec:
            continue
        if key in ("type_k", "type_v"):
            out[key] = str(rec[key])[:20]
        elif key == "flash_attn":
            out[key] = _FLASH.get(num(rec, key, where, int), str(rec[key])[:20])
        else:
            out[key] = num(rec, key, where, int)
    return out


def _test_cell(idx: int, rec: dict[str, Any], where: str, fmt: str) -> dict[str, Any]:
    n_prompt, n_gen = num(rec, "n_prompt", where, int), num(rec, "n_gen", where, int)
    depth = num(rec, "n_depth", where, int) if "n_depth" in rec else 0
    if n_prompt < 0 or n_gen < 0 or depth < 0 or n_prompt + n_gen == 0:
        raise PeerError(f"{where}: a test with n_prompt {n_prompt}, n_gen {n_gen}, n_depth {depth} measures nothing")
    samples = rec.get("samples_ns") if fmt in ("json", "jsonl") else None
    if samples is not None:
        if not isinstance(samples, list) or not samples or len(samples) > 100_000:
            raise PeerError(f"{where}: samples_ns must be a list of times in ns")
        lat = [num({"samples_ns": s}, "samples_ns", where) / 1e9 for s in samples]
    else:
        lat = [num(rec, "avg_ns", where) / 1e9]
    if not all(0 < t < 1e7 for t in lat):
        raise PeerError(f"{where}: a time of {min(lat):g} s is not a measurement")
    test = f"pp{n_prompt}" if not n_gen else f"tg{n_gen}" if not n_prompt else f"pp{n_prompt}+tg{n_gen}"
    peer = {"tool": TOOL, "test": test, "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": depth}
    for key in ("avg_ts", "stddev_ts", "avg_ns", "stddev_ns"):
        if key in rec:
            peer[key] = num(rec, key, where)
    params = {"n_depth": depth} if depth else {}
    at = _time(rec["test_time"], where) if "test_time" in rec else None
    if not n_gen:  # prompt processing: one token out, the prompt's time is its TTFT
        c = cell(idx, 1, n_prompt, 1, lat, 1, params=params, peer=peer, at=at)
        for rep in c["repeats"]:
            rep["ttft_s"] = list(rep["latencies_s"])
        c["ttft_s"] = c["latency_s"]
        c["metrics"]["prompt_tokens_per_s"] = n_prompt / c["latency_s"]
        return c
    if not n_prompt:  # generation only: every token is a decode step
        c = cell(idx, 1, max(1, depth), n_gen, lat, n_gen, params=params, peer=peer, at=at)
        c["decode_tps"] = c["tokens_per_s"]
        return c
    return cell(idx, 1, n_prompt, n_gen, lat, n_gen, params=params, peer=peer, at=at)


def to_document(text: str, fmt: str, source: str, digest: str, mtime: float) -> dict[str, Any]:
    recs = records(text, fmt, source)
    if not recs:
        raise PeerError(f"{source}: llama-bench output without a single test; run llama-bench again")
    if len(recs) > MAX_RECORDS:
        raise PeerError(f"{source}: {len(recs)} tests, more than {MAX_RECORDS} in one file")
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # configuration -> (test number, test)
    for number, rec in enumerate(recs, 1):
        key = json.dumps({k: rec.get(k) for k in sorted(rec) if k not in TEST_FIELDS}, sort_keys=True, default=str)
        groups.setdefault(key, []).append((number, rec))
    keys = {k for rec in recs for k in rec if k not in TEST_FIELDS and k != "model_filename"}
    varying = sorted(k for k in keys if len({json.dumps(r.get(k), default=str) for r in recs}) > 1)
    runs = []
    name = os.path.basename(source)
    for n, (key, tests) in enumerate(groups.items()):
        first = tests[0][1]
        where = f"{source}: configuration {n + 1}"
        cells = [_test_cell(i, rec, f"{source}: test {number}", fmt) for i, (number, rec) in enumerate(tests)]
        created = min([c["started_at"] for c in cells if c["started_at"]] or [mtime])
        version = f"b{first.get('build_number', '?')} ({first.get('build_commit', 'unknown')})"
        label = " ".join([TOOL] + [f"{k}={first.get(k)}" for k in varying])
        notes = [f"imported from {TOOL} -o {fmt} ({name})",
                 f"{TOOL} fields: " + verbatim({k: v for k, v in first.items() if k not in TEST_FIELDS})]
        if fmt in ("csv", "sql"):
            notes.append(f"{TOOL}'s {fmt.upper()} output keeps no per-repetition samples: one repeat per cell, no "
                         "interval (-o json keeps them)")  # fmt: skip
        host = {"cpu": str(first.get("cpu_info", "?"))[:1000],
                "gpus": [{"name": g.strip()[:1000]} for g in str(first.get("gpu_info") or "").split(",") if g.strip()]}  # fmt: skip
        config = {"quant": _quant(first.get("model_type")), "options": _options(first, where)}
        runs.append(run(digest, key, tool=TOOL, version=version[:200], fmt=fmt, source=source, engine="llama.cpp",
                        model=str(first.get("model_filename", "?")), label=label, device=_device(first),
                        created_at=created, cells=cells, config=config, host=host, notes=notes))  # fmt: skip
    return document(digest, f"{TOOL} {name}", min(r["created_at"] for r in runs), runs)
