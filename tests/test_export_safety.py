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
