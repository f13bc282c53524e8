"""`import` of hostile or careless files: one line naming the first problem by its JSON path, exit 2,
nothing written, no database file left behind; good exports (v1 and v2) still import, idempotently."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import cli
from tests.test_cli import _assert_one_line_error
from tests.tui_support import fill_store


@pytest.fixture(scope="module")
def export_text(tmp_path_factory) -> str:
    """A JSON export of the dashboard fixture's three runs (done, OOM and skipped cells, telemetry, flags)."""
    from tui.cli import main

    tmp = tmp_path_factory.mktemp("export")
    db = tmp / "src.db"
    ids = fill_store(db)
    out = tmp / "x.json"
    assert main(["export", *ids, "--format", "json", "-o", str(out), "--db", str(db)]) == 0
    return out.read_text()


@pytest.fixture
def doc(export_text) -> dict[str, Any]:
    return json.loads(export_text)


def rows(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return "\n".join(line for line in con.iterdump() if "schema_info" not in line)
    finally:
        con.close()


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation: the value at a dotted path (list indices as numbers) becomes `value`."""

    def apply(d: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            d = d[p]
        d[last] = value

    return apply


def _drop(path: str) -> Callable[[dict], None]:
    def apply(d: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            d = d[p]
        del d[last]

    return apply


def _nest(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = {"a": v}
    return v


def _dup_run(d: dict) -> None:
    d["runs"][1]["id"] = d["runs"][0]["id"]


def _dup_group(d: dict) -> None:
    d["groups"].append(copy.deepcopy(d["groups"][0]))


# (name, mutation of a valid export, fragment of the one-line error)
SHAPES = [
    ("created_at 1e20", _set("runs.0.created_at", 1e20), "runs[0].created_at"),
    ("created_at negative", _set("runs.0.created_at", -5), "runs[0].created_at"),
    ("finished before created", _set("runs.0.finished_at", 1.0), "runs[0].finished_at"),
    ("cell time 1e20", _set("runs.0.cells.0.finished_at", 1e20), "runs[0].cells[0].finished_at"),
    ("telemetry time 1e20", _set("runs.0.telemetry.0.t", 1e20), "runs[0].telemetry[0].t"),
    ("config a list", _set("runs.0.config", ["engine"]), "runs[0].config"),
    ("config engine a dict", _set("runs.0.config.engine", {"x": 1}), "runs[0].config.engine"),
    ("host a string", _set("runs.0.host", "bench-host"), "runs[0].host"),
    ("hostname a number (History lists it as text)", _set("runs.0.host.hostname", 5), "runs[0].host.hostname"),
    ("host gpus a dict", _set("runs.0.host.gpus", {"name": "H100"}), "runs[0].host.gpus"),
    ("host gpu name a number", _set("runs.0.host.gpus.0.name", 100), "runs[0].host.gpus[0].name"),
    ("runtime versions a list", _set("runs.0.runtime.versions", ["torch"]), "runs[0].runtime.versions"),
    ("negative cells_total", _set("runs.0.cells_total", -1), "runs[0].cells_total"),
    ("string cells_total", _set("runs.0.cells_total", "8"), "runs[0].cells_total"),
    ("string batch", _set("runs.0.cells.0.batch", "4"), "runs[0].cells[0].batch"),
    ("negative batch", _set("runs.0.cells.0.batch", -4), "runs[0].cells[0].batch"),
    ("float batch", _set("runs.0.cells.0.batch", 4.5), "runs[0].cells[0].batch"),
    ("boolean batch", _set("runs.0.cells.0.batch", True), "runs[0].cells[0].batch"),
    ("huge peak bytes", _set("runs.0.cells.0.peak_rss_bytes", 10**30), "runs[0].cells[0].peak_rss_bytes"),
    ("negative tokens/s", _set("runs.0.cells.0.tokens_per_s", -3.0), "runs[0].cells[0].tokens_per_s"),
    ("latency a string", _set("runs.0.cells.0.repeats.0.latencies_s", "fast"), "runs[0].cells[0].repeats[0].latencies_s"),
    ("repeat a number", _set("runs.0.cells.0.repeats.0", 7), "runs[0].cells[0].repeats[0]"),
    ("round a list", _set("runs.0.cells.0.repeats.0.round", [1]), "runs[0].cells[0].repeats[0].round"),
    ("params a list value", _set("runs.0.cells.0.params", {"shared_len": [1]}), "runs[0].cells[0].params"),
    ("metrics a list", _set("runs.0.cells.0.metrics", [1]), "runs[0].cells[0].metrics"),
    ("bw_share a string", _set("runs.0.cells.0.metrics", {"efficiency": {"bw_share": "x"}}),
     "runs[0].cells[0].metrics.efficiency.bw_share"),
    ("flags a dict", _set("runs.0.cells.0.flags", {"code": "cv"}), "runs[0].cells[0].flags"),
    ("per-GPU peaks a string", _set("runs.0.cells.0.metrics", {"tp": {"nvml_used_bytes_per_gpu": "ab"}}),
     "runs[0].cells[0].metrics.tp.nvml_used_bytes_per_gpu"),  # the cell table reads it (vLLM before 12-05)
    ("unknown run status", _set("runs.0.status", "<b>done</b>"), "runs[0].status"),
    ("unknown cell status", _set("runs.0.cells.1.status", "fine"), "runs[0].cells[1].status"),
    ("id not hex", _set("runs.0.id", "<script>alert(1)</script>"), "runs[0].id"),
    ("group_id not hex", _set("runs.0.group_id", "g1"), "runs[0].group_id"),
    ("notes a string", _set("runs.0.notes", "fell back"), "runs[0].notes"),
    ("label a number", _set("runs.0.label", 5), "runs[0].label"),
    ("label too long", _set("runs.0.label", "x" * 100_000), "runs[0].label"),
    ("lone surrogate", _set("runs.0.name", "\ud800"), "runs[0].name"),
    ("quality value a string", _set("runs.0.quality", [{"metric": "perplexity", "value": "low"}]),
     "runs[0].quality[0].value"),
    ("missing model", _drop("runs.0.model"), "runs[0].model"),
    ("missing created_at", _drop("runs.0.created_at"), "runs[0].created_at"),
    ("missing group_id", _drop("runs.0.group_id"), "runs[0].group_id"),
    ("missing cell status", _drop("runs.0.cells.0.status"), "runs[0].cells[0].status"),
    ("missing group created_at", _drop("groups.0.created_at"), "groups[0].created_at"),
    ("unknown run field", _set("runs.0.owner", "me"), "runs[0].owner"),
    ("runs a dict", _set("runs", {"a": 1}), "runs"),
    ("cell a number", _set("runs.0.cells.0", 5), "runs[0].cells[0]"),
    ("cells a string", _set("runs.0.cells", "none"), "runs[0].cells"),
    ("groups a string", _set("groups", "g"), "groups"),
    ("duplicate run ids", _dup_run, "runs[1].id"),
    ("duplicate group ids", _dup_group, "groups[1].id"),
    ("deep config options", _set("runs.0.config.options", _nest(40)), "runs[0].config.options"),
    ("schema v99", _set("schema_version", 99), "schema v99"),
    ("schema_version a string", _set("schema_version", "2"), "schema"),
]


def _write(tmp_path: Path, d: dict) -> Path:
    f = tmp_path / "in.json"
    f.write_text(json.dumps(d), encoding="utf-8", errors="surrogatepass")
    return f


def _refused(tmp_path: Path, f: Path, fragment: str) -> None:
    """One line, exit 2; a fresh --db is not created and an existing one keeps its rows."""
    fresh = tmp_path / "fresh" / "new.db"
    _assert_one_line_error(cli("import", str(f), db=fresh), fragment)
    assert not fresh.exists() and not fresh.parent.exists()
    existing = tmp_path / "existing.db"
    if not existing.exists():
        fill_store(existing, runs=1)
    before = rows(existing)
    _assert_one_line_error(cli("import", str(f), db=existing), fragment)
    assert rows(existing) == before


@pytest.mark.parametrize("name, mutate, fragment", SHAPES, ids=[s[0] for s in SHAPES])
def test_malformed_document_is_refused_by_path(tmp_path, doc, name, mutate, fragment):
    mutate(doc)
    _refused(tmp_path, _write(tmp_path, doc), fragment)


RAW = [
    ("not JSON", b"{not json", "is not JSON"),
    ("a JSON array", b"[1, 2, 3]", "not a codebench-tui JSON export"),
    ("a JSON string", b'"codebench-tui export"', "not a codebench-tui JSON export"),
    ("invalid UTF-8", b'{"format": "codebench-tui export", "x": "\xff\xfe"}', "not UTF-8"),
    ("UTF-16", '{"format": "codebench-tui export"}'.encode("utf-16"), "not UTF-8"),
    ("deep nesting", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ("deep nesting in a run", b'{"format": "codebench-tui export", "schema_version": 2, "runs": ['
     + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]}", "nested too deeply"),
    ("NaN", b'{"format": "codebench-tui export", "schema_version": 2, "runs": [], "x": NaN}', "NaN"),
    ("Infinity", b'{"format": "codebench-tui export", "schema_version": 2, "runs": [], "x": -Infinity}', "Infinity"),
    ("a 5000-digit integer", b'{"format": "codebench-tui export", "schema_version": 2, "x": ' + b"9" * 5000 + b"}",
     "too large"),
    ("empty file", b"", "is not JSON"),
]


@pytest.mark.parametrize("name, data, fragment", RAW, ids=[r[0] for r in RAW])
def test_unreadable_document_is_refused(tmp_path, name, data, fragment):
    f = tmp_path / "in.json"
    f.write_bytes(data)
    _refused(tmp_path, f, fragment)


def test_huge_file_is_refused_before_it_is_read(tmp_path):
    from store.importdoc import MAX_BYTES

    f = tmp_path / "huge.json"
    with open(f, "wb") as fh:
        fh.truncate(MAX_BYTES + 1)  # sparse: no disk, and reading it would take a while
    _refused(tmp_path, f, "too large")


def test_missing_file_and_directory(tmp_path):
    _refused(tmp_path, tmp_path / "nope.json", "cannot read")
    (tmp_path / "adir").mkdir()
    _refused(tmp_path, tmp_path / "adir", "cannot read")


def test_good_export_imports_idempotently_and_reads(tmp_path, export_text, doc):
    f = tmp_path / "x.json"
    f.write_text(export_text)
    db = tmp_path / "new" / "runs.db"
    first = cli("import", str(f), db=db)
    assert first.returncode == 0 and "imported 3 run(s)" in first.stdout, first.stderr
    before = rows(db)
    again = cli("import", str(f), db=db)
    assert again.returncode == 0 and "imported 0 run(s)" in again.stdout and "3 already there" in again.stdout
    assert rows(db) == before
    out = cli("export", *(r["id"] for r in doc["runs"]), "--format", "json", db=db, check=True).stdout
    assert out == export_text  # lossless round trip


def test_v1_export_still_imports(tmp_path, doc):
    doc["schema_version"] = 1
    doc.pop("comparison")
    for r in doc["runs"]:
        r.pop("notes")
        for c in r["cells"]:
            c.pop("flags")
    f = _write(tmp_path, doc)
    db = tmp_path / "v1.db"
    proc = cli("import", str(f), db=db)
    assert proc.returncode == 0, proc.stderr
    assert sqlite3.connect(db).execute("select count(*) from run").fetchone()[0] == 3
    cli("export", "last", "--format", "html", db=db, check=True)


def test_an_import_that_fails_after_opening_leaves_no_new_database(tmp_path, export_text, monkeypatch):
    """A failure past the checks (a full disk, say) removes the database file and folders it created."""
    import store.export
    from tui.cli import main

    def broken(doc, *, session):
        raise OSError(28, "No space left on device")

    f = tmp_path / "x.json"
    f.write_text(export_text)
    monkeypatch.setattr(store.export, "import_export", broken)
    db = tmp_path / "new" / "sub" / "runs.db"
    with pytest.raises(OSError):
        main(["import", str(f), "--db", str(db)])
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing.db"
    fill_store(existing, runs=1)
    before = rows(existing)
    with pytest.raises(OSError):
        main(["import", str(f), "--db", str(existing)])
    assert existing.exists() and rows(existing) == before


@pytest.mark.parametrize("literal, fragment", [("1e999", "runs[0].config.options: holds a number that is not finite"),
                                               ("-1e400", "runs[0].config.options: holds a number that is not finite"),
                                               ("9" * 101, "runs[0].config.options: holds an integer too large"),
                                               ("9" * 5000, "holds an integer too large")])
def test_numbers_json_allows_but_no_column_can_hold(tmp_path, doc, literal, fragment):
    doc["runs"][0]["config"]["options"] = {"n": 7.125e77}
    f = tmp_path / "in.json"
    f.write_text(json.dumps(doc).replace("7.125e+77", literal))
    _refused(tmp_path, f, fragment)


@pytest.mark.parametrize("tp", [
    {"size": "ab", "peak_rss_bytes_per_rank": [1, 2]},
    {"size": 2, "peak_rss_bytes_per_rank": 5, "peak_bytes_per_rank": {"a": 1}},
    {"size": -3, "peak_rss_bytes_per_rank": ["\x1b[31m", None]},
    {"size": 1e308, "peak_gpu_bytes_per_rank": [1 << 30, -5], "nvml_used_bytes_per_gpu": [None]},
], ids=["size-text", "per-rank-number", "per-rank-escapes", "size-huge-negative-bytes"])  # fmt: skip
def test_hostile_tensor_parallel_figures_import_and_read(tmp_path, doc, tp):
    """metrics.tp's untyped keys (size, per-rank RSS) import as given; every view reads them without a crash."""
    doc["runs"][0]["cells"][0].setdefault("metrics", {})["tp"] = tp
    f = _write(tmp_path, doc)
    db = tmp_path / "tp.db"
    assert cli("import", str(f), db=db).returncode == 0
    run = doc["runs"][0]["id"]
    for args in (["export", run, "--format", "csv"], ["export", run, "--format", "md"],
                 ["--replay", run, "--headless"], ["compare", run, doc["runs"][1]["id"], "--no-chart"]):  # fmt: skip
        proc = cli(*args, db=db)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr[-500:])
        assert "\x1b[31m" not in proc.stdout
