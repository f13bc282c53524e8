"""Issue 19: every cell's peak memory predicted before it runs, stored beside the measured one; predicted-OOM
cells shown in the plan and skipped under --skip-predicted-oom. Real engines and processes on `tiny`."""

from __future__ import annotations

import json

import pytest

from engines import registry
from engines.harness.memplan import RunMemory, oom_reason, plan
from engines.models import memory
from engines.study.grid import Cell
from engines.study.schema import EngineRun, build_spec
from store.db import open_db
from store.memfit import error_rows, fitted
from tests.helpers import cli, rows

GIB = 2**30
QUICK = ["--warmup", "1", "--iters", "1", "--repeats", "1"]


def test_starcoder2_7b_bf16_sdpa_by_hand():
    """starcoder2-7b bf16, SDPA, b=2 in=4096 out=16 on a GPU (the allocator's peak: constant 0)."""
    run = EngineRun(engine="hf-generate", precision="bf16", attention="sdpa")
    pred = memory.predict("starcoder2-7b:random", run, Cell(2, 4096, 16), registry.get("hf-generate"), "cuda:0")
    # weights: 7,173,923,840 parameters (the preset's count, as `models` shows it) x 2 bytes
    weights = 7_173_923_840 * 2
    # KV: 2 (K and V) x 32 layers x 4 KV heads x head dim 4608 / 36 = 128 x 2 bytes = 65,536 bytes a token,
    # for 2 sequences x (4096 + 16) tokens
    kv = 2 * 32 * 4 * 128 * 2 * (2 * (4096 + 16))
    # activations, one layer: b x in = 8192 tokens x (4 x hidden 4608 + 2 x intermediate 18432: starcoder2's
    # MLP is not gated, fc and its activation) x 2 bytes
    activations = 8192 * (4 * 4608 + 2 * 18432) * 2
    assert (pred.weights, pred.kv_cache, pred.activations, pred.workspace, pred.constant) == (
        14_347_847_680, 538_968_064, 905_969_664, 0, 0)
    assert (weights, kv, activations) == (pred.weights, pred.kv_cache, pred.activations)
    assert pred.total == 15_792_785_408  # 14.7 GiB
    assert pred.largest_block == 8192 * 18432 * 2  # the MLP's intermediate, bf16
    # on a GPU the largest block must find fresh room above the peak (the caching allocator's fragments)
    assert pred.fits(15_792_785_408 + 301_989_888) is True and pred.fits(15_792_785_408 + 301_989_887) is False
    # eager holds the fp32 softmax's scores: 2 x 36 heads x 4096^2 x 10 bytes in 16-bit
    eager = memory.predict("starcoder2-7b:random", run.model_copy(update={"attention": "eager"}), Cell(2, 4096, 16),
                           registry.get("hf-generate"), "cuda:0")  # fmt: skip
    assert eager.workspace == 2 * 36 * 4096**2 * 10 and eager.largest_block == 2 * 36 * 4096**2 * 4


def test_llama_cpp_context_only_grows():
    """llama.cpp's KV is its context: n_seq x a per-sequence length rounded up to 256, never shrinking."""
    cells = [Cell(1, 32, 8), Cell(1, 600, 8), Cell(8, 32, 8)]
    assert memory.llama_positions(cells[:1], {}) == 256
    assert memory.llama_positions(cells[:2], {}) == 768  # 608 rounded up
    assert memory.llama_positions(cells, {}) == 8 * 768  # batch 8 keeps the longest per-sequence room
    assert memory.llama_positions(cells, {"n_ctx": 4096}) == 4096
    spec = build_spec({"model": "tiny", "runs": [{"engine": "llama.cpp", "quant": "q8_0",
                                                  "options": {"type_k": "q8_0"}}],
                       "grid": {"batch": [1, 8], "input_len": [32, 600], "output_len": [8]}})  # fmt: skip
    (rm,) = plan(spec, "cpu")
    per_token = 2 * 4 * 4 * 32  # layers x KV heads x head dim, K and V
    kv_bytes = (34 / 32 + 2) / 2  # type_k q8_0 (34 bytes a block of 32), type_v f16
    assert [e["kv_cache"] for e in rm.entries()] == [int(per_token * kv_bytes * p) for p in (256, 768, 8 * 768, 8 * 768)]
    tiny = memory.predict("tiny", EngineRun(engine="hf-generate", precision="fp32"), Cell(1, 32, 8),
                          registry.get("hf-generate"), "cpu")  # fmt: skip
    assert rm.entries()[0]["weights"] == int(tiny.weights * 8.5 / 32)  # the GGUF at q8_0, from fp32 tiny


def test_cell_mem_limit_caps_what_a_cell_may_add():
    """--cell-mem-limit is RLIMIT_AS over the loaded worker: capacity = weights + constant + the limit."""
    spec = build_spec({"model": "tiny", "runs": [{"engine": "hf-generate", "precision": "fp32"}],
                       "grid": {"batch": [1, 16], "input_len": [32, 2048], "output_len": [4]},
                       "cell_mem_limit_bytes": 128 * 2**20})  # fmt: skip
    (rm,) = plan(spec, "cpu")
    entries = rm.entries()
    loaded = entries[0]["weights"] + entries[0]["constant"]
    assert {e["capacity_bytes"] for e in entries} == {loaded + 128 * 2**20}
    assert [e["fits"] for e in entries] == [True, True, True, False]  # b=16 in=2048: 436 MB of activations alone
    assert oom_reason(entries[3]).startswith("predicted OOM: ") and "(--skip-predicted-oom)" in oom_reason(entries[3])
    assert entries[0]["constant_source"] == "default"
    fitted_rm = RunMemory("tiny", spec.runs[0], "cpu", spec.cells(), None, None, {("hf-generate", "rss"): (7, 3)})
    assert (fitted_rm.entry(0)["constant"], fitted_rm.entry(0)["constant_source"]) == (7, "fitted (3 cells)")
    assert fitted_rm.entry(0)["fits"] is None  # capacity unknown (a Ray node's)


def test_dry_run_lists_predicted_oom_cells_and_writes_nothing(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--model", "starcoder2-7b:random", "--engine", "hf-generate", "--precision", "bf16",
               "--attention", "eager,sdpa", "--batch", "1,8", "--input-len", "512,4096", "--output-len", "16",
               "--device", "cpu", "--cell-mem-limit", "8GiB", "--dry-run", db=db, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # the console wraps long lines
    # eager b=8 in=4096: 8 x 36 x 4096^2 x 10 bytes of scores (45 GiB) over 13.4 GiB of weights + 8 GiB
    assert "hf-generate bf16 eager: 1 cell(s) predicted OOM" in out and "b=8 in=4096 out=16 64.2 GiB" in out
    assert "hf-generate bf16 sdpa:" not in out
    assert "predicted peak: max 64.2 GiB of" in out and "1 cell(s) predicted OOM" in out
    assert not db.exists()


@pytest.mark.parametrize("value", ['"yes"', "1", "null"])
def test_bad_skip_predicted_oom_in_a_study_file(tmp_path, value):
    study = tmp_path / "s.json"
    study.write_text('{"runs": [{"engine": "hf-generate"}], "skip_predicted_oom": %s}' % value)
    db = tmp_path / "runs.db"
    proc = cli("run", "--study", str(study), "--dry-run", db=db, timeout=60)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "skip_predicted_oom" in err, err
    assert not db.exists()


def _cells(db):
    return rows(db, "select c.batch, c.input_len, c.status, c.error, c.metrics from cell c order by c.idx")


def test_skip_predicted_oom_skips_exactly_the_predicted_cells(tmp_path):
    """A 128 MiB --cell-mem-limit: only b=16 in=2048 is predicted not to fit. With the flag it is skipped and never
    started (its prediction stored); without, it is started as before."""
    grid = ["--model", "tiny", "--engine", "hf-generate", "--batch", "1,16", "--input-len", "32,2048",
            "--output-len", "4", "--device", "cpu", "--cell-mem-limit", "128MiB", *QUICK, "--quiet"]  # fmt: skip
    db = tmp_path / "skip.db"
    proc = cli("run", *grid, "--skip-predicted-oom", db=db, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    cells = _cells(db)
    skipped = [(b, i, err) for b, i, status, err, _ in cells if status == "skipped"]
    assert [(b, i) for b, i, _ in skipped] == [(16, 2048)]
    assert skipped[0][2].startswith("predicted OOM: ") and skipped[0][2].endswith("(--skip-predicted-oom)")
    mems = [json.loads(m)["memory"] for *_, m in cells]
    assert [m["fits"] for m in mems] == [True, True, True, False]
    assert all(m["predicted_bytes"] > 0 and m["capacity_bytes"] > 0 for m in mems)
    started = rows(db, "select count(*) from cell where started_at is not null and batch = 16 and input_len = 2048")
    assert started == [(0,)]

    db2 = tmp_path / "noskip.db"
    cli("run", *grid, db=db2, timeout=600)
    cells = _cells(db2)
    big = [(status, err, json.loads(m)["memory"]) for b, i, status, err, m in cells if (b, i) == (16, 2048)]
    assert big and big[0][0] != "skipped", big  # a prediction is not a verdict: it was started
    assert big[0][2]["fits"] is False


def test_tiny_on_the_cpu_predicted_against_measured(tmp_path):
    """hf-generate, llama.cpp and vLLM on tiny, on the CPU: the prediction is stored with every cell, with the
    built-in constants within 50 % of the measured resident peak, and once calibrated on this host's stored cells
    (store.memfit, what the runner uses next time) within 15 %. Why so wide before calibration: on tiny the RSS is
    ~95 % interpreter and libraries (the constant); the dev VM measured +0 to +5 %, a fresh CI venv +10 to +30 %
    (allocator arenas, library pages). A wrong term (vLLM's 2 GiB KV pool, eager scores) misses by more. After
    calibration only the terms are left: how memory grows with batch and length. The per-cell errors are printed."""
    engines = [e for e in ("hf-generate", "llama.cpp", "vllm") if registry.check(EngineRun(engine=e), "cpu").ok]
    if "hf-generate" not in engines:
        pytest.skip("hf-generate is not installed")
    db = tmp_path / "tiny.db"
    proc = cli("run", "--model", "tiny", "--engine", ",".join(engines), "--batch", "1,8", "--input-len", "32,512",
               "--output-len", "8", "--device", "cpu", "--schedule", "sequential", *QUICK, "--quiet",
               db=db, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicted peak: max" in proc.stdout
    store = open_db(db, create=False)
    got = error_rows(store)
    assert {r["engine"] for r in got} == set(engines) and len(got) == 4 * len(engines)
    for r in got:
        print(f"{r['label']:24} b={r['batch']} in={r['input_len']}: predicted {r['predicted_bytes'] / 2**20:7.1f} MiB, "
              f"measured {r['measured_bytes'] / 2**20:7.1f} MiB, error {r['error'] * 100:+.1f} %")
    fits = fitted(store)
    assert {engine for engine, _ in fits} == set(engines) and all(n == 4 for _, n in fits.values())
    for r in got:
        assert r["status"] == "done" and r["basis"] == "rss"
        assert abs(r["error"]) < 0.50, r
        # the stored prediction, refit with this host's constant
        calibrated = r["predicted_bytes"] - _stored_constant(store, r) + fits[(r["engine"], "rss")][0]
        print(f"  calibrated: predicted {calibrated / 2**20:7.1f} MiB, error {(r['measured_bytes'] / calibrated - 1) * 100:+.1f} %")
        assert abs(r["measured_bytes"] / calibrated - 1) < 0.15, (r, calibrated)
    store.close()
    # the next run on this host predicts with the fitted constant, and says so
    proc = cli("run", "--model", "tiny", "--engine", "hf-generate", "--batch", "8", "--input-len", "512",
               "--output-len", "8", "--device", "cpu", *QUICK, "--quiet", db=db, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = open_db(db, create=False)
    last = [r for r in error_rows(store) if r["engine"] == "hf-generate"][-1]
    mem = _memory(store, last)
    store.close()
    assert mem["constant_source"] == "fitted (4 cells)" and mem["constant"] == fits[("hf-generate", "rss")][0]
    assert abs(last["error"]) < 0.15, last


def _memory(store, row) -> dict:
    """metrics.memory of an error_rows row's cell."""
    from sqlmodel import select

    from store.models import CellRow

    with store.session() as s:
        cells = s.exec(select(CellRow).where(CellRow.run_id == row["run_id"], CellRow.batch == row["batch"],
                                             CellRow.input_len == row["input_len"])).all()  # fmt: skip
    return cells[0].metrics["memory"]


def _stored_constant(store, row) -> int:
    return _memory(store, row)["constant"]


def test_interleaved_runs_hold_memory_beside_each_other(monkeypatch):
    """Interleaved runs share the device: on a GPU the others' caching allocators keep their peak of the cell, so
    eager b=2 in=8192 fits an 80 GiB card alone (61 GiB + an 18 GiB block) but not beside sdpa-flash's 16 GiB."""
    study = {"model": "starcoder2-7b:random", "device": "cuda",
             "runs": [{"engine": "hf-generate", "precision": "bf16", "attention": a} for a in ("eager", "sdpa-flash")],
             "grid": {"batch": [2], "input_len": [4096, 8192], "output_len": [16]}}  # fmt: skip
    card = 80 * GIB
    monkeypatch.setattr("engines.harness.memplan.device_total", lambda device: card)  # no GPU here
    interleaved = plan(build_spec(study), "cuda:0")
    alone = plan(build_spec({**study, "schedule": "sequential"}), "cuda:0")
    eager, flash = interleaved
    assert [e["fits"] for e in alone[0].entries()] == [True, True]
    assert [e["fits"] for e in eager.entries()] == [True, False]
    assert eager.entry(1)["held_beside_bytes"] == flash.held(1) == flash.entry(1)["predicted_bytes"]
    assert eager.entry(1)["capacity_bytes"] == card - flash.held(1)
    from engines.harness.memplan import fits_alone
    from tui.memory_plan import plan_lines

    assert fits_alone(eager.entry(1)) and not fits_alone(eager.entry(0))
    assert any("1 of them would fit without the interleaved runs beside them" in line for line in plan_lines(interleaved))
    # Setup's plan line judges the same way: the picked schedule decides
    from tui.memory_plan import setup_line

    runs, cells = build_spec(study).runs, [(2, 4096, 16), (2, 8192, 16)]
    assert setup_line("starcoder2-7b:random", runs, cells, "cuda:0", None, None, "interleaved").endswith("1 predicted OOM")
    assert "predicted OOM" not in setup_line("starcoder2-7b:random", runs, cells, "cuda:0", None, None, "sequential")
    eager.alone()  # the study fell back to sequential
    assert eager.entry(1)["fits"] is True and "held_beside_bytes" not in eager.entry(1)
    # a run whose own cell cannot fit empties its cache after the OOM: beside it, only its loaded model stays
    big = plan(build_spec({**study, "grid": {"batch": [8], "input_len": [16384], "output_len": [16]}}), "cuda:0")
    assert big[0].held(0) == big[0].entry(0)["weights"] + big[0].entry(0)["constant"]
    # on the CPU large blocks go back to the system: the others hold their loaded model only
    cpu = plan(build_spec({**study, "device": "cpu"}), "cpu")
    assert cpu[0].beside and cpu[1].held(1) == cpu[1].entry(1)["weights"] + cpu[1].entry(1)["constant"]
