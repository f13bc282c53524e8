"""Ratios with their intervals in every view: the comparison and cell tables, the heat map and the exports."""

from __future__ import annotations

import csv
import io
import json

import pytest

from store.export import import_export, parse_export, render, to_json
from store.metrics import summarise
from store.results import RunResult
from store.tables import cell_table, comparison_table, quality_table
from tests.tui_support import utc  # noqa: F401  (fixture)

LOAD = {"code": "load", "reason": "other processes used 0.97 of 2 CPU cores during the timed repeats (up to 1.10)"}


def _cell(batch: int, lats: list[float], flags: list | None = None) -> dict:
    repeats = [{"latencies_s": [x], "ttft_s": [x / 10], "tokens": [batch * 16], "round": i} for i, x in enumerate(lats)]
    return {"idx": batch, "batch": batch, "input_len": 32, "output_len": 16, "params": {}, "status": "done", "error": "",
            "repeats": repeats, "metrics": {}, "flags": flags, "peak_rss_bytes": 300 << 20,
            **summarise(repeats, batch, 16)}  # fmt: skip


def _run(rid: str, label: str, cells: list[dict], *, name: str | None = None, runtime: dict | None = None,
         notes: list | None = None, options: dict | None = None) -> RunResult:  # fmt: skip
    run = {"id": rid * 32, "group_id": "9" * 32, "name": name, "model": "tiny", "engine": "hf-generate",
           "label": label, "config": {"engine": "hf-generate", "precision": "fp32", "options": options or {}},
           "spec": {}, "host": {"hostname": "box", "cpu": "x", "cpu_logical": 2}, "device": "cpu",
           "runtime": {"schedule": "interleaved", **(runtime or {})}, "status": "done", "error": "",
           "created_at": 1.7e9, "finished_at": 1.7e9 + 5, "cells_total": len(cells), "notes": notes or [],
           "owner_host": "", "owner_pid": 0, "owner_started": 0.0}  # fmt: skip
    return RunResult(run, cells)


@pytest.fixture
def trio() -> list[RunResult]:
    """A baseline, a clear 2x at batch 1 and noise at batch 2, and an identical copy of the baseline."""
    base = _run("a", "hf-generate fp32", [_cell(1, [1.0, 1.02, 0.98, 1.0]), _cell(2, [1.0, 1.1, 0.9, 1.05])],
                options={"v": 0}, runtime={"env": {"OMP_NUM_THREADS": "1"}})  # fmt: skip
    fast = _run("b", "hf-generate fp32", [_cell(1, [0.5, 0.52, 0.49, 0.5], [LOAD]), _cell(2, [0.95, 1.2, 0.8, 1.1])],
                options={"v": 1}, runtime={"env": {"OMP_NUM_THREADS": "2"}},
                notes=["schedule: sequential instead of interleaved: the 2 runs need about 9 GiB"])  # fmt: skip
    same = _run("c", "hf-generate fp32", [_cell(1, [1.0, 1.02, 0.98, 1.0], None), _cell(2, [1.0, 1.1, 0.9, 1.05])],
                options={"v": 2}, runtime={"env": {"OMP_NUM_THREADS": "1"}})  # fmt: skip
    return [base, fast, same]


def test_ratios_carry_intervals_and_only_significant_ones_are_coloured(trio):
    t = comparison_table(trio)
    assert t.headers[-1] == "× base (95% CI)"
    b1, b2 = t.rows  # batch, base tok/s, fast tok/s, ratio, same tok/s, ratio
    assert b1[3].startswith("2.00× (") and b1[3].endswith(")")  # a clear 2x: an interval, no ≈
    assert b1[2].endswith(" ⚑") and not b1[1].endswith("⚑")  # the flagged cell is marked after its value
    assert b2[3].startswith("≈") and b2[5].startswith("≈1.00× (")
    assert t.styles[0][3] == "better" and t.styles[1][3] == "same" and t.styles[0][5] == "same"
    notes = "\n".join(t.notes)
    assert "v=1 [bbbbbbbb] vs baseline: 1 of 2 cells differ significantly (1 faster, 0 slower); " \
           "geometric mean of the significant ratios 2.00×" in notes  # fmt: skip
    assert "v=2 [cccccccc] vs baseline: no cell of 2 differs significantly" in notes
    assert "paired t on log ratios per round" in notes
    assert "environment differs: $OMP_NUM_THREADS: 1 | 2 | 1" in notes
    assert "note (v=1 [bbbbbbbb]): schedule: sequential instead of interleaved" in notes
    assert "⚑ load: other processes used 0.97 of 2 CPU cores" in notes and "(v=1 b=1)" in notes
    assert "⚑ flags: load: other processes used CPU" in notes


def test_noise_floor_turns_a_small_significant_change_into_noise(trio):
    trio[1].cells[0] = _cell(1, [0.97, 0.99, 0.95, 0.97])  # 3% faster, tightly measured
    assert comparison_table(trio).styles[0][3] == "better"
    t = comparison_table(trio, floors={"tokens_per_s": 0.05}, floor_note="noise floor of this host (A/A): ±5.0%")
    assert t.styles[0][3] == "same" and t.rows[0][3].startswith("≈1.03×")
    assert "noise floor of this host (A/A): ±5.0%" in t.notes
    assert comparison_table(trio, metric="latency_s", floors={"tokens_per_s": 0.05}).styles[0][3] == "better"


def test_one_repeat_and_old_rows_without_flags_or_notes(trio):
    for r in trio:
        for c in r.cells:
            c["repeats"] = c["repeats"][:1]
            c.pop("flags")
        r.run.pop("notes")
    t = comparison_table(trio)
    assert all(row[3].startswith("≈") and "(" not in row[3] for row in t.rows)
    assert {st[3] for st in t.styles} == {"same"} and "no interval: one repeat on a side" in t.notes[3]
    assert "±95% CI" not in cell_table(trio[0]).headers


def test_peak_memory_uses_the_threshold(trio):
    trio[1].cells[0]["peak_rss_bytes"] = 400 << 20
    t = comparison_table(trio, metric="peak_mem")
    assert t.headers[-1] == "× base"
    assert t.rows[0][3] == "1.33×" and t.styles[0][3] == "worse" and t.rows[1][3] == "≈1.00×"
    assert any("one sample per cell" in n for n in t.notes)
    assert "1 larger" in t.notes[1]


def test_cell_table_shows_the_interval_half_width_and_flags(trio):
    t = cell_table(trio[1])
    assert "±" not in t.headers and "±95% CI" in t.headers and "flags" in t.headers
    ci, flags = t.headers.index("±95% CI"), t.headers.index("flags")
    assert t.rows[0][flags] == "⚑ load" and t.rows[1][flags] == "-"
    assert t.rows[0][ci].endswith("%") and 1.0 < float(t.rows[0][ci][:-1]) < 10.0
    assert any(n.startswith("±95% CI: half-width of the 95% confidence interval of tok/s") for n in t.notes)
    assert any(n.startswith("⚑ flags: load:") for n in t.notes)
    assert "flags" not in cell_table(trio[0]).headers  # no flagged cell: no column


def test_quality_ratios_are_not_judged(trio):
    for r, v in zip(trio, (10.0, 12.0, 9.0)):
        r.quality = [{"metric": "perplexity", "value": v, "details": {}}]
    t = quality_table(trio)
    assert t.rows[0][3] == "1.20×" and set(t.styles[0]) == {"done"}


def test_heat_map_colours_only_significant_ratios(trio):
    from rich.console import Console

    from tui.widgets.charts import speedup_grids

    console = Console(width=100, record=True, color_system="truecolor")
    console.print(speedup_grids(trio, 0))
    text = console.export_text()
    assert "2.00×" in text and "≈2.00×" not in text and text.count("≈1.00×") == 3
    html = console.export_html(inline_styles=True)
    assert html.count("background-color") == 1  # the one significant cell


def test_csv_and_json_carry_the_verdicts_and_json_still_imports(trio, tmp_path):
    from store.db import open_db
    from store.models import Run
    from store.results import load_result

    text = render("csv", trio, [], 0, {"tokens_per_s": 0.01}, "note")
    rows = list(csv.DictReader(io.StringIO(text)))
    base_rows, fast = rows[:2], rows[2]
    assert all(r["ratio"] == "" and r["significant"] == "" for r in base_rows)
    assert fast["baseline_run_id"] == "a" * 32 and float(fast["ratio"]) == pytest.approx(2.0)
    assert float(fast["ratio_ci_low"]) < 2.0 < float(fast["ratio_ci_high"])
    assert (fast["significant"], fast["ratio_method"]) == ("true", "paired")
    assert fast["flags"] == f"load: {LOAD['reason']}" and rows[3]["significant"] == "false"

    doc = json.loads(render("json", trio, [], 0))
    cmp = doc["comparison"]
    assert cmp["baseline_run_id"] == "a" * 32
    fast_tps = [c for c in cmp["cells"] if c["run_id"] == "b" * 32 and c["metric"] == "tokens_per_s"]
    assert [(c["batch"], c["significant"], c["method"]) for c in fast_tps] == [(1, True, "paired"), (2, False, "paired")]
    assert {c["metric"] for c in cmp["cells"]} == {"tokens_per_s", "latency_s", "ttft_s", "decode_tps"}
    assert doc["runs"][1]["cells"][0]["flags"] == [LOAD]

    db = open_db(tmp_path / "in.db")
    groups = [{"id": "9" * 32, "name": None, "created_at": 1.7e9, "spec": {}}]
    exported = to_json(trio, groups)
    with db.session() as s:
        assert import_export(parse_export(exported, "x.json"), session=s) == (3, 0)
        s.commit()
    with db.session() as s:
        again = [load_result(s.get(Run, r.id), session=s) for r in trio]
    # import ignored the derived section; the same verdicts come back from the imported runs
    assert json.loads(to_json(again, groups))["comparison"] == json.loads(exported)["comparison"]


def test_markdown_and_html_escape_what_users_named(trio):
    trio[1].run["label"] = "evil | <script>alert(1)</script> *x*"
    trio[1].cells[0]["flags"] = [{"code": "load", "reason": "pipes | and <b>tags</b>"}]
    md = render("md", trio, [])
    assert "<script>" not in md and "&lt;script&gt;" in md and "evil \\| " in md
    assert "pipes \\| and &lt;b&gt;tags&lt;/b&gt;" in md
    section = md.split("**tok/s by cell**")[1].split("\n\n**")[0]
    header, _, *rows = [line for line in section.splitlines() if line.startswith("|")]
    for line in (header, *rows):  # a user's pipe did not add a column
        assert line.count(" | ") - line.count("\\| ") == len(comparison_table(trio).headers) - 1
    html = render("html", trio, [])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;tags" in html
    assert 'class="same"' in html and 'class="better"' in html


def test_compare_screen_and_its_export_use_the_hosts_noise_floor(tmp_path, utc):  # noqa: F811
    """A floor stored for the fixture's host turns the bf16 run's 1.6-2x into ≈; the screen's export agrees."""
    import asyncio
    import time

    from store.db import open_db
    from store.models import NoiseFloor
    from store.noise import host_key
    from tests.test_tui_snapshots import settle
    from tests.tui_support import HOST, fill_store
    from tui.app import make_app
    from tui.screens.compare import CompareScreen

    path = tmp_path / "fixture.db"
    ids = fill_store(path)
    db = open_db(path)
    with db.session() as s:
        s.add(NoiseFloor(host_key=host_key(HOST, "cpu"), metric="tokens_per_s", floor=1.0, cells=8,
                         created_at=time.time()))  # fmt: skip
        s.commit()
    db.close()

    async def body():
        app = make_app(str(path), preload=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await app.push_screen(CompareScreen(ids))
            await settle(pilot, lambda a: bool(getattr(a.screen, "results", None)))
            cmp = app.screen
            assert cmp.floors == {"tokens_per_s": 1.0} and "noise floor of this host" in cmp.floor_note
            t = cmp.table()
            bf16, llama = t.headers.index("× base (95% CI)"), len(t.headers) - 1
            assert all(row[bf16].startswith("≈") for row in t.rows[:6])  # done cells of bf16
            assert not any(row[llama].startswith("≈") for row in t.rows)  # 2.3-3.7x: beyond the floor
            assert any("±100.0%" in n for n in t.notes)
            cmp.export("csv", tmp_path / "out.csv")
            await settle(pilot, lambda a: (tmp_path / "out.csv").exists())

    asyncio.run(body())
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    bf16_rows = [r for r in rows if r["run_id"] == ids[1] and r["status"] == "done"]
    assert len(bf16_rows) == 6 and {r["significant"] for r in bf16_rows} == {"false"}
    assert {r["ratio_reason"] for r in bf16_rows} <= {"within the noise floor ±100.0%", "interval contains 1"}
