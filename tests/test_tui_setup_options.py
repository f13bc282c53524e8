"""Setup's per-axis option pickers, driven from the keyboard; the light History table, live log and sparkline."""

from __future__ import annotations

import asyncio
import functools
import json

import pytest

from tests.test_tui_snapshots import app_for as _app  # noqa: F401  (fixture)
from tests.test_tui_snapshots import settle, store
from tests.tui_support import fixed_check, utc  # noqa: F401  (fixture)


def aio(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def _focus_picker(pilot, axis: str, engine: str = "hf-generate") -> None:
    for _ in range(40):
        f = pilot.app.focused
        if getattr(f, "axis", None) == axis and f.name == engine:
            return
        await pilot.press("tab")
    raise AssertionError(f"tab never reached the {axis} picker of {engine}")


def test_offers_and_runs_match_the_registry(fixed_registry):
    """Offered values are those of combinations that run; the runs are engines.registry.expand's, less the rest."""
    from engines import registry
    from tui.planning import axis_offers, default_picks, engine_choices, engine_runs

    choice = next(c for c in engine_choices("cpu", fixed_check) if c.name == "hf-generate")
    picks = default_picks(choice)
    assert picks == {"precision": ["fp32"], "attention": ["sdpa"]}
    offers = axis_offers(choice, picks)
    assert ("flash_attention_2", False, "flash_attention_2 needs a CUDA GPU") in offers["attention"]
    assert all(ok for _, ok, _ in offers["precision"])
    picks = {"precision": ["fp32", "bf16"], "attention": ["sdpa", "flash_attention_2"]}
    runs, why = engine_runs(choice, picks, [], "cpu", fixed_check)
    expanded = registry.expand(["hf-generate"], precision=["fp32", "bf16"], attention=["sdpa", "flash_attention_2"])
    assert runs == [r for r in expanded if r.attention == "sdpa"] and len(runs) == 2
    assert len(why) == 2 and all("needs a CUDA GPU" in w for w in why)
    no_attention = {**picks, "attention": []}
    assert engine_runs(choice, no_attention, [], "cpu", fixed_check) == ([], ["pick a value for attention"])


@pytest.fixture
def fixed_registry(monkeypatch):
    """The snapshot tests' engine list: attention sdpa, eager, flash_attention_2 (no GPU here)."""
    from engines import registry
    from tests.tui_support import fixed_engines

    monkeypatch.setattr(registry, "ENGINES", fixed_engines())


@aio
async def test_pickers_from_the_keyboard_build_the_clis_runs(store, fixed_registry):
    from engines import registry

    path, _ = store
    app = _app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda a: bool(a.screen.choices))
        setup = app.screen
        assert [r.label() for r in setup.selected_runs()] == ["hf-generate fp32 sdpa"]
        await _focus_picker(pilot, "precision")
        await pilot.press("right", "space")  # + bf16
        await pilot.press("tab", "right", "space")  # + eager
        await pilot.press("right", "space")  # flash_attention_2: not offered on this CPU, stays off
        await pilot.pause(0.2)
        assert setup.blocks["hf-generate"].pickers[1].selected == ["sdpa", "eager"]
        want = registry.expand(["hf-generate"], precision=["fp32", "bf16"], attention=["sdpa", "eager"])
        assert setup.selected_runs() == want
        assert "4 runs" in str(setup.blocks["hf-generate"].head.render())
        assert "4 run(s) × 6 cells" in str(setup.query_one("#plan-msg").render())
        assert [r.model_dump() for r in setup.build().runs] == [r.model_dump() for r in want]
        await pilot.press("shift+tab", "space")  # untick bf16 again
        await pilot.pause(0.2)
        assert len(setup.selected_runs()) == 2
        await pilot.press("left", "space")  # untick fp32 too: the precision row is empty
        await pilot.pause(0.2)
        assert setup.blocks["hf-generate"].pickers[0].selected == []
        assert "pick a value for precision" in str(setup.query_one("#plan-msg").render())
        await pilot.press("ctrl+r")
        await pilot.pause(0.2)
        assert app.screen is setup  # nothing started


@aio
async def test_spec_values_are_checked_as_typed(store, monkeypatch):
    from engines import registry

    path, _ = store
    app = _app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda a: bool(a.screen.choices))
        setup = app.screen
        field = setup.query_one(".spec-input")
        field.focus()
        await pilot.press(*"ngram=x")
        await pilot.pause(0.2)
        assert setup.selected_runs() == []
        assert "ngram=N must be an integer" in str(setup.query_one("#plan-msg").render())
        await pilot.press("ctrl+u", *"ngram=4")
        await pilot.pause(0.2)
        assert setup.selected_runs() == registry.expand(["hf-generate"], spec=["ngram=4"])
        assert [r.spec for r in setup.selected_runs()] == ["none", "ngram=4"]


@aio
async def test_loaded_study_sets_the_pickers_or_keeps_its_runs(store, tmp_path, fixed_registry):
    path, _ = store
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"model": "tiny", "runs": [
        {"engine": "hf-generate", "precision": p, "attention": "eager"} for p in ("fp32", "bf16")] + [
        {"engine": "llama.cpp", "quant": "q8_0"}], "grid": {"batch": [1], "input_len": [8], "output_len": [4]}}))
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"model": "tiny", "runs": [{"engine": "hf-generate", "options": {"layers": 2}}]}))
    app = _app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda a: bool(a.screen.choices))
        setup = app.screen
        assert setup.load_file(str(plain))
        await pilot.pause(0.3)
        assert setup.loaded_runs is None  # the pickers say exactly these runs
        assert setup.blocks["hf-generate"].pickers[0].selected == ["fp32", "bf16"]
        assert setup.blocks["llama.cpp"].pickers[0].selected == ["q8_0"]
        assert [r.label() for r in setup.selected_runs()] == ["hf-generate fp32 eager", "hf-generate bf16 eager",
                                                              "llama.cpp q8_0"]  # fmt: skip
        assert setup.load_file(str(odd))
        await pilot.pause(0.3)
        assert [r.options for r in setup.build().runs] == [{"layers": 2}]  # kept as loaded
        assert "as loaded from the study file" in str(setup.query_one("#plan-msg").render())
        await _focus_picker(pilot, "precision")
        await pilot.press("right", "space")  # touching a picker replaces them
        await pilot.pause(0.2)
        assert setup.loaded_runs is None and all(not r.options for r in setup.build().runs)


@aio
async def test_schedule_and_worker_env_round_trip_through_a_study_file(store, tmp_path, fixed_registry):
    path, _ = store
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"model": "tiny", "runs": [{"engine": "hf-generate"}, {"engine": "hf-pipeline"}],
                                 "schedule": "sequential", "worker_env": {"OMP_WAIT_POLICY": "PASSIVE"}}))  # fmt: skip
    app = _app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda a: bool(a.screen.choices))
        setup = app.screen
        assert setup.load_file(str(study))
        await pilot.pause(0.3)
        spec = setup.build()
        assert spec.schedule == "sequential" and spec.worker_env == {"OMP_WAIT_POLICY": "PASSIVE"}
        assert "worker env: OMP_WAIT_POLICY=PASSIVE" in str(setup.query_one("#plan-msg").render())
        env = setup.query_one("#worker-env")
        env.focus()
        await pilot.press("ctrl+u", *"OMP WAIT")
        await pilot.pause(0.2)
        assert env.has_class("-invalid")
        assert "is not KEY=VALUE" in str(setup.query_one("#grid-msg").render())
        await pilot.press("ctrl+u", *"OMP_NUM_THREADS=1")
        await pilot.pause(0.2)
        assert setup.build().worker_env == {"OMP_NUM_THREADS": "1"}


@aio
async def test_skip_predicted_oom_round_trips_through_the_form(store, tmp_path, fixed_registry):
    """The study file's skip_predicted_oom shows in the "pred. OOM" picker, and the picker decides the spec."""
    from textual.widgets import Select

    path, _ = store
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"model": "tiny", "runs": [{"engine": "hf-generate"}], "skip_predicted_oom": True}))
    app = _app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda a: bool(a.screen.choices))
        setup = app.screen
        assert setup.build().skip_predicted_oom is False  # the default runs them: a prediction is not a verdict
        assert setup.load_file(str(study))
        await pilot.pause(0.3)
        picker = setup.query_one("#predicted-oom", Select)
        assert picker.value == "skip" and setup.build().skip_predicted_oom is True
        picker.value = "run"
        await pilot.pause(0.2)
        assert setup.build().skip_predicted_oom is False


@aio
async def test_history_table_keys_select_and_sort(store):
    from tui.widgets.runtable import RunTable

    path, ids = store
    app = _app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        await settle(pilot, lambda a: bool(getattr(a.screen, "rows", None)))
        table = app.screen.query_one("#hist-table", RunTable)
        assert table.keys == [ids[2], ids[1], ids[0]] and table.cursor_key == ids[2]
        # 80 columns: host, model and name give way; the run label is never cut here
        shown = [table.columns[i].key for i, _ in table._layout]
        assert shown[:7] == ["sel", "id", "started", "run", "status", "cells", "best"] and "host" not in shown
        await pilot.press("end")
        assert table.cursor_key == ids[0]
        await pilot.press("space")
        assert app.screen.selected == [ids[0]]
        await pilot.press("home", "s")  # sort by name
        await settle(pilot, lambda a: a.screen.sort == "name" and table.row_count == 3)
        assert "name ↑" in table.labels["name"]
        assert str(table.render_line(0).text).split()[:2] == ["id", "started"]


@aio
async def test_live_log_follows_and_scrolls_back():
    from textual.app import App

    from tui.widgets.spark import Spark
    from tui.widgets.tail import TailLog

    class Box(App):
        def compose(self):
            yield TailLog(id="log", max_lines=50)
            yield Spark([1, 5, 2, 8], id="spark")

    app = Box()
    async with app.run_test(size=(40, 12)) as pilot:
        log = app.query_one(TailLog)
        log.styles.height = 5
        for i in range(60):
            log.write(f"line {i}")
        await pilot.pause()
        assert len(log.lines) == 50  # max_lines
        assert [log.render_line(y).text.strip() for y in range(5)] == [f"line {i}" for i in range(55, 60)]
        log.focus()
        await pilot.press("up", "up")
        assert log.render_line(4).text.startswith("line 57") and "↓2" in log.render_line(4).text
        log.write("line 60")  # scrolled back: the view stays put
        assert log.render_line(4).text.startswith("line 57")
        await pilot.press("home")
        assert log.render_line(0).text.strip() == "line 11"  # line 60 pushed line 10 out
        await pilot.press("end")
        assert log.render_line(4).text.strip() == "line 60"
        spark = app.query_one(Spark)
        bars = spark.render_line(0).text
        assert len(bars) == 40 and bars[-1] == "█" and set(bars) <= set("▁▂▃▄▅▆▇█")
        spark.data = []
        assert spark.render_line(0).text == "▁" * 40


def test_markdown_table_is_public():
    from store.export import markdown_table
    from store.tables import Table

    md = markdown_table(Table("tok/s | by cell", ["batch", "a|b"], [["1", "2.0"]], notes=["n"]))
    assert md.splitlines()[:4] == ["**tok/s \\| by cell**", "", "| batch | a\\|b |", "|:---:|:---:|"]
