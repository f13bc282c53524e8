"""store.memfit: constants fitted from stored predictions and measurements, the error per cell, hostile data."""

import math

from engines.study.grid import Cell
from store.db import memory_db
from store.memfit import error_rows, fitted, fitted_constants
from store.noise import host_key
from store.writer import RunWriter

GIB = 2**30
HOST_A = {"hostname": "a", "cpu": "x", "cpu_logical": 8, "gpus": []}
HOST_B = {"hostname": "b", "cpu": "x", "cpu_logical": 8, "gpus": []}


def _mem(predicted, constant, basis="rss"):
    return {"weights": predicted - constant, "kv_cache": 0, "activations": 0, "workspace": 0, "constant": constant,
            "largest_block": 0, "basis": basis, "predicted_bytes": predicted, "capacity_bytes": 8 * GIB,
            "fits": True}  # fmt: skip


def _run(db, engine, host, cells, device="cpu"):
    """cells: (status, memory dict or anything, peak_rss, peak_gpu)."""
    w = RunWriter(db)
    gid = w.begin_group({"model": "tiny"}, None)
    rid = w.begin_run(group_id=gid, model="tiny", engine=engine, label=f"{engine} fp32", config={"engine": engine},
                      spec={}, host=host, cells_total=len(cells), name=None)  # fmt: skip
    w.set_runtime(rid, {}, device)
    for i, (status, mem, rss, gpu) in enumerate(cells):
        metrics = {} if mem is None else {"memory": mem}
        result = {"repeats": [{"latencies_s": [0.1], "ttft_s": [0.01], "tokens": [8]}], "peak_rss_bytes": rss,
                  "peak_gpu_bytes": gpu, "metrics": metrics}  # fmt: skip
        w.add_cell(rid, i, Cell(1 + i, 32, 8), status, result=result)
    w.finish_run(rid, "done")
    w.close()
    return rid


def test_constant_is_the_median_of_measured_minus_the_computed_terms():
    db = memory_db()
    # predicted 1 GiB with a 100 MiB constant: terms 924 MiB; measured 1.2, 1.3, 5 GiB -> median leftover 1.3 GiB - terms
    _run(db, "hf-generate", HOST_A, [("done", _mem(GIB, 100 * 2**20), int(x * GIB), None) for x in (1.2, 1.3, 5.0)])
    terms = GIB - 100 * 2**20
    got = fitted(db)
    assert got == {("hf-generate", "rss"): (int(1.3 * GIB) - terms, 3)}
    assert fitted_constants(db) == {("hf-generate", "rss"): int(1.3 * GIB) - terms}


def test_only_done_cells_with_a_prediction_count_and_only_this_host():
    db = memory_db()
    _run(db, "vllm", HOST_A, [("done", _mem(GIB, 0), 2 * GIB, None), ("oom", _mem(GIB, 0), 9 * GIB, None),
                              ("crashed", _mem(GIB, 0), 9 * GIB, None), ("done", None, 9 * GIB, None)])  # fmt: skip
    _run(db, "vllm", HOST_B, [("done", _mem(GIB, 0), 3 * GIB, None)])
    assert fitted_constants(db, host_key(HOST_A, "cpu")) == {("vllm", "rss"): GIB}
    assert fitted_constants(db, host_key(HOST_B, "cpu")) == {("vllm", "rss"): 2 * GIB}
    assert fitted(db)[("vllm", "rss")] == (int(1.5 * GIB), 2)  # both hosts: median of 1 and 2 GiB
    assert fitted_constants(db, host_key(HOST_A, "cuda")) == {}  # another kind of device: nothing fitted


def test_gpu_basis_uses_the_allocator_peak_not_rss():
    db = memory_db()
    _run(db, "hf-generate", HOST_A, [("done", _mem(4 * GIB, 0, "gpu"), 30 * GIB, 5 * GIB)], device="cuda:0")
    assert fitted_constants(db) == {("hf-generate", "gpu"): GIB}
    (row,) = error_rows(db)
    assert row["measured_bytes"] == 5 * GIB and row["basis"] == "gpu"
    assert math.isclose(row["error"], 0.25)


def test_error_rows_per_cell():
    db = memory_db()
    rid = _run(db, "llama.cpp", HOST_A, [("done", _mem(2 * GIB, 0), 3 * GIB, None), ("oom", _mem(GIB, 0), GIB, None),
                                         ("done", None, GIB, None)])  # fmt: skip
    rows = error_rows(db, [rid])
    assert [r["status"] for r in rows] == ["done", "oom", "done"]
    assert rows[0]["predicted_bytes"] == 2 * GIB and rows[0]["measured_bytes"] == 3 * GIB
    assert math.isclose(rows[0]["error"], 0.5)
    assert rows[1]["error"] is None  # an OOM cell's peak is where it stopped
    assert rows[2]["predicted_bytes"] is None and rows[2]["error"] is None
    assert (rows[0]["engine"], rows[0]["label"], rows[0]["batch"], rows[0]["input_len"], rows[0]["output_len"]) == (
        "llama.cpp", "llama.cpp fp32", 1, 32, 8)
    assert rows[0]["fits"] is True and rows[0]["capacity_bytes"] == 8 * GIB
    assert error_rows(db, ["nope"]) == []


def test_hostile_stored_values_count_as_absent():
    db = memory_db()
    bad = [
        "not a dict", ["a", "list"], {"predicted_bytes": "1e9", "constant": 0}, {"predicted_bytes": float("nan"),
        "constant": 0}, {"predicted_bytes": -5, "constant": 0}, {"predicted_bytes": True, "constant": 0},
        {"predicted_bytes": GIB, "constant": "x"}, {"predicted_bytes": GIB, "constant": 2 * GIB},
        {"predicted_bytes": float("inf"), "constant": 0}, {"predicted_bytes": 1.5, "constant": 0},
        {"predicted_bytes": GIB, "constant": 0, "basis": 7, "fits": "yes", "capacity_bytes": -1},
    ]  # fmt: skip
    cells = [("done", m, 2 * GIB, None) for m in bad] + [("done", _mem(GIB, 0), "lots", None),
                                                         ("done", _mem(GIB, 0), float("nan"), None)]  # fmt: skip
    _run(db, "hf-generate", "not a dict", cells)
    # only the cell whose basis is not a string falls back to the device (cpu -> rss) and counts
    assert fitted(db) == {("hf-generate", "rss"): (GIB, 1)}
    rows = error_rows(db)
    assert len(rows) == len(cells)
    assert [r["predicted_bytes"] for r in rows[:10]] == [None] * 6 + [GIB, GIB, None, None]
    assert rows[10]["fits"] is None and rows[10]["capacity_bytes"] is None and rows[10]["basis"] == "rss"
    assert rows[-1]["measured_bytes"] is None and rows[-1]["error"] is None


def test_float_byte_counts_from_an_import_are_read():
    db = memory_db()
    _run(db, "hf-generate", HOST_A, [("done", {**_mem(GIB, 0), "predicted_bytes": float(GIB)}, 2 * GIB, None)])
    assert fitted_constants(db) == {("hf-generate", "rss"): GIB}


def test_vllm_engine_core_counts_on_the_cpu():
    """vLLM keeps its weights and KV pool in its engine-core process: its peak adds to the worker's."""
    db = memory_db()
    w = RunWriter(db)
    gid = w.begin_group({}, None)
    rid = w.begin_run(group_id=gid, model="tiny", engine="vllm", label="vllm fp32", config={}, spec={}, host=HOST_A,
                      cells_total=1, name=None)  # fmt: skip
    w.set_runtime(rid, {}, "cpu")
    w.add_cell(rid, 0, Cell(1, 32, 8), "done", result={
        "repeats": [{"latencies_s": [0.1], "ttft_s": [0.01], "tokens": [8]}], "peak_rss_bytes": GIB,
        "metrics": {"memory": _mem(3 * GIB, 0), "last_extra": {"vllm_procs_peak_rss_bytes": 2 * GIB}}})  # fmt: skip
    w.add_cell(rid, 1, Cell(2, 32, 8), "done", result={
        "repeats": [{"latencies_s": [0.1], "ttft_s": [0.01], "tokens": [8]}], "peak_rss_bytes": GIB,
        "metrics": {"memory": _mem(3 * GIB, 0), "last_extra": {"vllm_procs_peak_rss_bytes": "2 GiB"}}})  # fmt: skip
    w.commit()
    w.close()
    rows = error_rows(db)
    assert [r["measured_bytes"] for r in rows] == [3 * GIB, GIB]  # a hostile figure counts as absent
    assert rows[0]["error"] == 0.0
