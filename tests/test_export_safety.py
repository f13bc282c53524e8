"""Exports of hostile runs: CSV cells cannot become spreadsheet formulas, HTML cannot carry script."""

from __future__ import annotations

import csv
import io
import json

from store.export import to_csv
from store.results import RunResult
from tests.helpers import cli
from tests.test_cli import _assert_one_line_error

FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]


def _hostile_result(text: str, tokens_per_s: float = -1.5) -> RunResult:
    run = {"id": "ab" * 16, "name": text, "label": text, "model": text, "device": text, "status": "done",
           "group_id": "cd" * 16, "created_at": 1.7e9, "notes": [text],
           "config": {"engine": text, "precision": text, "attention": text, "quant": text, "options": {text: text}}}
    cell = {"batch": 1, "input_len": 8, "output_len": 4, "params": {}, "status": "failed", "error": text,
            "tokens_per_s": tokens_per_s, "latency_s": -0.25, "flags": [{"code": text, "reason": text}]}
    return RunResult(run, [cell])


def test_csv_cells_from_user_data_cannot_start_a_formula():
    for text in FORMULAS:
        rows = list(csv.DictReader(io.StringIO(to_csv([_hostile_result(text)]))))
        assert len(rows) == 1
        row = rows[0]
        for key, value in row.items():
            if key in ("tokens_per_s", "latency_s"):
                continue
            assert not value or value[0] not in "=+-@\t\r", (text, key, value)
        for key in ("run_name", "label", "model", "engine", "precision", "attention", "quant", "device"):
            assert row[key] == "'" + text, (key, row[key])
        first = text.splitlines()[0]  # the error column keeps the first line
        assert row["error"] == ("'" + first if first else ""), row["error"]
        assert row["tokens_per_s"] == "-1.5" and row["latency_s"] == "-0.25"  # numbers stay numbers


def test_csv_keeps_ordinary_text_as_it_is():
    row = next(csv.DictReader(io.StringIO(to_csv([_hostile_result("hf-generate bf16", 12.5)]))))
    assert row["label"] == "hf-generate bf16" and row["tokens_per_s"] == "12.5"


PAYLOADS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
# The only tags and attributes the HTML exporter writes itself.
OWN_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "ul", "li", "code", "b", "table", "thead",
            "tbody", "tr", "th", "td", "p"}
KEEP = {"format", "id", "group_id", "status"}  # ids and statuses are checked on import: a payload there is refused
POISON_KEYS = ("options", "params", "libraries", "env", "versions")


def _poison(value, payload: str, key: str = ""):
    """Every free string of an export (and the keys of free-form maps) replaced by the payload."""
    if isinstance(value, dict):
        out = {}
        for n, (k, v) in enumerate(value.items()):
            new_key = f"{payload}{n}" if key in POISON_KEYS else k
            out[new_key] = v if k in KEEP else _poison(v, payload, k)
        return out
    if isinstance(value, list):
        return [_poison(v, payload, key) for v in value]
    return payload if isinstance(value, str) else value


class _Tags:
    def __init__(self, text: str) -> None:
        from html.parser import HTMLParser

        self.tags: set[str] = set()
        self.attrs: set[tuple[str, str]] = set()
        parser = HTMLParser()
        parser.handle_starttag = lambda tag, attrs: (self.tags.add(tag), self.attrs.update(attrs))  # type: ignore
        parser.feed(text)


def test_html_export_of_an_imported_hostile_document_holds_no_markup_of_its_own(tmp_path):
    from tests.tui_support import fill_store

    src = tmp_path / "src.db"
    ids = fill_store(src)
    exported = cli("export", *ids, "--format", "json", db=src, check=True).stdout
    for n, payload in enumerate(PAYLOADS):
        doc = json.loads(exported)
        doc.pop("comparison")
        for r in doc["runs"]:
            r["quality"] = [{"metric": "perplexity", "value": None, "details": {"error": "x"}, "created_at": 1.7e9}]
            r["cells"][0]["params"] = {"shared_len": 1}
            r["cells"][0]["flags"] = [{"code": "load", "reason": "x"}]
            r["notes"] = ["x"]
            r["name"] = "x"
        doc = _poison(doc, payload)
        f = tmp_path / f"hostile{n}.json"
        f.write_text(json.dumps(doc))
        db = tmp_path / f"in{n}.db"
        cli("import", str(f), db=db, check=True)
        html_text = cli("export", *ids, "--format", "html", db=db, check=True).stdout
        assert payload.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") in html_text  # it is shown
        low = html_text.lower()
        assert "<script" not in low and "<img" not in low
        seen = _Tags(html_text)
        assert seen.tags <= OWN_TAGS, seen.tags - OWN_TAGS
        assert {name for name, _ in seen.attrs} <= {"charset", "class"}, seen.attrs
        classes = {v for name, v in seen.attrs if name == "class"}
        assert classes <= {"note", "done", "oom", "skipped", "crashed", "failed", "cancelled", "better", "worse",
                           "same", "missing", ""}, classes


def test_ids_and_statuses_holding_markup_are_refused_on_import(tmp_path):
    from tests.tui_support import fill_store

    src = tmp_path / "src.db"
    ids = fill_store(src, runs=1)
    doc = json.loads(cli("export", ids[0], "--format", "json", db=src, check=True).stdout)
    for path in (("id",), ("status",), ("group_id",), ("cells", 0, "status")):
        bad = json.loads(json.dumps(doc))
        target = bad["runs"][0]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = PAYLOADS[0]
        f = tmp_path / "bad.json"
        f.write_text(json.dumps(bad))
        _assert_one_line_error(cli("import", str(f), db=tmp_path / "x.db"), "runs[0]." + ".".join(
            str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "["))
        assert not (tmp_path / "x.db").exists()
