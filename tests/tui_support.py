"""Fixed data for the dashboard tests: a store filled through RunWriter with fixed numbers and times,
a scripted event sequence for the live screen, and a fixed engine-availability answer.

Snapshots must not depend on the clock, the machine or which engines CI installed.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from engines.base import Availability
from engines.study import events as ev
from engines.study.grid import Cell
from engines.study.schema import EngineRun

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
HOST = {"hostname": "bench-host", "os": "Linux 6.1", "machine": "x86_64", "cpu": "Test CPU", "cpu_logical": 16,
        "cpu_physical": 8, "mem_total": 64 * 2**30, "gpus": [{"index": 0, "name": "H100", "mem_total": 80 * 2**30},
        {"index": 1, "name": "H100", "mem_total": 80 * 2**30}], "driver": "550.54", "python": "3.11.7",
        "libraries": {"torch": "2.13.0", "transformers": "5.19.0"}}  # fmt: skip
BATCHES, INPUTS, OUTPUT = (1, 2, 4, 8), (32, 128), 32
FIXED_IDS = (0x3F2A9C1E, 0xB4286B66, 0x7D05E9A3)
# (engine, precision, attention, quant, speed factor, batch from which cells OOM)
RUNS = [
    ("hf-generate", "fp32", "sdpa", None, 1.0, None),
    ("hf-generate", "bf16", "sdpa", None, 1.6, 8),
    ("llama.cpp", None, None, "q8_0", 2.3, None),
]


def fixed_check(run: EngineRun, device: str) -> Availability:
    """What a CPU machine without vllm and flash-attn answers, always."""
    if run.engine == "vllm":
        return Availability.no("vllm needs vllm, which is not installed", 'pip install "codebench-tui[vllm]"')
    if run.attention == "flash_attention_2":
        return Availability.no("flash_attention_2 needs a CUDA GPU", "use --attention sdpa on the CPU")
    return Availability.yes()


def fixed_engines() -> dict:
    """A fixed engine list (names, summaries, option axes), so registry growth does not move snapshots."""
    from engines.registry import EngineInfo

    hf_axes = {"precision": ("fp32", "bf16", "fp16"), "attention": ("sdpa", "eager", "flash_attention_2")}
    infos = [
        EngineInfo("hf-generate", "engines.adapters.hf.engine:HFGenerate", "transformers generate on token ids", ("torch",), "hf",
                   hf_axes),
        EngineInfo("hf-pipeline", "engines.adapters.hf.engine:HFPipeline", "transformers text-generation pipeline", ("torch",), "hf",
                   hf_axes),
        EngineInfo("llama.cpp", "engines.adapters.llamacpp.engine:LlamaCpp", "llama.cpp, GGUF F32/F16 and quantized", ("llama_cpp",),
                   "llamacpp", {"quant": ("f32", "q8_0", "q4_0")}),
        EngineInfo("vllm", "engines.adapters.vllm.engine:VLLM", "vLLM offline engine, paged attention", ("vllm",), "vllm",
                   {"precision": ("fp32", "bf16")}),
    ]  # fmt: skip
    return {i.name: i for i in infos}


def _latency(batch: int, in_len: int, factor: float) -> float:
    """Faster engines gain more at large batches and short prompts: a heat map with some shape."""
    gain = factor ** (1 + 0.15 * batch.bit_length() - in_len / 1024)
    return (0.20 + 0.03 * batch + 0.0004 * in_len * batch) / gain


# Cells measured while something else ran: repeats vary by ±40% and other processes held cores.
NOISY = {("hf-generate", "bf16", 1)}


def _repeats(lat: float, n: int, noisy: bool) -> list[dict]:
    """Three interleaved rounds whose means stay centred on `lat` (so the stored medians do not move),
    spread ±2% (±40% when noisy) in a pattern rotated per run, so rounds do not pair exactly."""
    d = 0.4 if noisy else 0.02
    spread = [0.0, d, -d][n % 3:] + [0.0, d, -d][: n % 3]
    out = []
    for r, e in enumerate(spread):
        mean = lat * (1 + e)
        rep = {"latencies_s": [mean * (1 + 0.01 * r), mean * (1 - 0.01 * r)], "ttft_s": [lat / 8], "round": r}
        if noisy:
            rep["host"] = {"cores": 16, "other_cores": 1.5, "steal_share": 0.0}
        out.append(rep)
    return out


def fill_store(path: Path, runs: int = 3) -> list[str]:
    """Runs with fixed timings, statuses (done, OOM, skipped), telemetry with two GPUs. Returns run ids."""
    from store.db import open_db
    from store.writer import RunWriter

    db = open_db(path, create=True)
    writer = RunWriter(db)
    spec = {"model": "tiny", "grid": {"batch": list(BATCHES), "input_len": list(INPUTS), "output_len": [OUTPUT]},
            "timing": {"warmup": 1, "iters": 2, "repeats": 3}}  # fmt: skip
    group = writer.begin_group(spec, "fixture study")
    ids, times = [], []
    t = T0
    for n, (engine, precision, attention, quant, factor, oom_from) in enumerate(RUNS[:runs]):
        config = EngineRun(engine=engine, precision=precision, attention=attention, quant=quant)
        cells = [Cell(b, i, OUTPUT) for b in BATCHES for i in INPUTS]
        run_id = writer.begin_run(group_id=group, model="tiny", engine=engine, label=config.label(),
                                  config=config.model_dump(mode="json"), spec=spec, host=HOST,
                                  cells_total=len(cells), name="baseline" if n == 0 else None)  # fmt: skip
        runtime = {"load_s": 1.25, "dtype": precision or quant, "weight_bytes": 20 * 2**20,
                   "versions": {"torch": "2.13.0"}, "schedule": "interleaved"}  # fmt: skip
        if engine == "llama.cpp":
            runtime["n_threads"] = 8  # an environment difference the comparison names
        writer.set_runtime(run_id, runtime, "cpu")
        start = t
        t += 4.0
        oom_cells: list[Cell] = []
        for idx, cell in enumerate(cells):
            if any(cell.dominates(o) for o in oom_cells):
                writer.add_cell(run_id, idx, cell, "skipped", error="larger than an OOM cell", finished_at=t)
                continue
            if oom_from and cell.batch >= oom_from:
                t += 0.5
                writer.add_cell(run_id, idx, cell, "oom", error="CUDA out of memory", finished_at=t,
                                result={"started_at": t - 0.5})  # fmt: skip
                oom_cells.append(cell)
                continue
            lat = _latency(cell.batch, cell.input_len, factor)
            repeats = _repeats(lat, n, (engine, precision, cell.batch) in NOISY)
            began = t
            t += lat * 7
            writer.add_cell(run_id, idx, cell, "done", finished_at=t, result={
                "repeats": repeats, "started_at": began,
                "peak_rss_bytes": (300 + 40 * cell.batch + cell.input_len // 4) * 2**20,
                "peak_gpu_bytes": int((1000 + 300 * cell.batch * cell.input_len / 32) * 2**20 / factor),
            })  # fmt: skip
        k = 0
        while start + k * 0.5 < t:
            ts = start + k * 0.5
            gpus = [{"index": g, "mem_used": int((8 + (k % 10) + 4 * g) * 2**30), "mem_total": 80 * 2**30,
                     "util": (k * 7 + g * 13) % 100, "power_w": 180.0 + (k * 11) % 120} for g in range(2)]  # fmt: skip
            writer.add_telemetry(run_id, ts, 90.0 + (k * 17) % 110, (900 + 25 * (k % 12)) * 2**20, gpus)
            k += 1
        writer.finish_run(run_id, "done")
        ids.append(run_id)
        times.append((run_id, start, t))
        t += 60.0
    writer.close()
    db.close()
    # Fixed ids and times: uuid4 and the clock must not reach a snapshot.
    fixed = [f"{n:x}" * 4 for n in FIXED_IDS[: len(ids)]]
    con = sqlite3.connect(path)
    with con:
        for (run_id, start, end), new in zip(times, fixed):
            con.execute("update run set id=?, created_at=?, finished_at=? where id=?", (new, start, end, run_id))
            for table in ("cell", "telemetry", "quality"):
                con.execute(f"update {table} set run_id=? where run_id=?", (new, run_id))
        con.execute("update run set group_id=?", ("0" * 32,))
        con.execute("update run_group set id=?, created_at=?", ("0" * 32, T0))
    con.close()
    return fixed


def scripted_events() -> tuple[list[ev.Event], dict[int, tuple[int, int, int]], list[str]]:
    """A study of two runs mid-way: done, OOM, skipped and crashed cells, telemetry of two GPUs, a log."""
    cells = {i: (b, n, OUTPUT) for i, (b, n) in enumerate((b, n) for b in BATCHES for n in INPUTS)}
    labels = ["hf-generate fp32 sdpa", "hf-generate bf16 sdpa"]
    out: list[ev.Event] = []
    t = T0

    def add(e: ev.Event) -> None:
        out.append(e)

    for r, label in enumerate(labels):
        rid = str(r + 1) * 32
        add(ev.RunStarted(rid, t, label=label, cells_total=len(cells)))
        add(ev.WorkerStarted(rid, t + 0.1, pid=4242 + r))
        add(ev.Log(rid, t + 0.5, level="stderr", message="Loading weights: 100%|██████████| 39/39"))
        add(ev.Loaded(rid, t + 1.0, load_s=0.9, device="cuda:0", dtype="float32", weight_bytes=20 * 2**20))
        t += 1.0
        last = len(cells) if r == 0 else 5
        for idx in range(last):
            b, n, o = cells[idx]
            add(ev.CellStarted(rid, t, index=idx, label=f"b={b} in={n} out={o}"))
            lat = _latency(b, n, 1.0 + r)
            for k in range(1, 4):
                add(ev.Progress(rid, t + k * lat, index=idx, done=k, total=3, tokens_per_s=b * o / lat * (0.95 + 0.03 * k)))
            gpus = [{"index": g, "mem_used": int((6 + idx + 3 * g) * 2**30), "mem_total": 80 * 2**30,
                     "util": 40 + 7 * idx + g, "power_w": 150.0 + 20 * idx} for g in range(2)]  # fmt: skip
            add(ev.TelemetrySample(rid, t + lat, cpu_percent=95.0 + 10 * idx, rss_bytes=(1 + idx // 3) * 2**30, gpus=gpus))
            t += 4 * lat
            if r == 1 and idx == 3:
                add(ev.CellFinished(rid, t, index=idx, status="crashed", error="worker died (killed by SIGSEGV)"))
                add(ev.WorkerStarted(rid, t + 0.1, pid=4300, attempt=2))
                continue
            status = "oom" if (r == 0 and b == 8 and n == 128) else "done"
            repeats = [{"latencies_s": [lat, lat]}] if status == "done" else []
            flags = [{"code": "load", "reason": "other processes used 1.02 of 16 CPU cores during the timed repeats "
                                                "(up to 1.10)"}] if (r, idx) == (1, 2) else []  # fmt: skip
            add(ev.CellFinished(rid, t, index=idx, status=status, error="CUDA out of memory" if status == "oom" else "",
                                result={"repeats": repeats, "peak_gpu_bytes": (2 + idx) * 2**30, "flags": flags}))  # fmt: skip
        if r == 0:
            add(ev.RunFinished(rid, t + 0.2, status="done"))
            t += 0.5
    if out:
        b, n, o = cells[5]
        add(ev.CellStarted("2" * 32, t, index=5, label=f"b={b} in={n} out={o}"))
        add(ev.Progress("2" * 32, t + 0.2, index=5, phase="warmup", done=1, total=3, tokens_per_s=310.5))
    return out, cells, labels


@pytest.fixture
def fixture_db(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "fixture.db"
    return path, fill_store(path)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """Dates on screen in UTC, whatever the machine's zone."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- hostile data: every stored string tries the terminal (escapes) and Rich/Textual (markup) ---------------

# What a careless or hostile string may hold: clear the screen, retitle the window, a hyperlink, the C1 forms
# of CSI/OSC/ST, DEL, NUL and BEL.
ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://x\x1b\\here\x1b]8;;\x1b\\\x9b2J\x9d0;c1\x9c\x7f\x00\x07"
MARKUP = ("[/]", "[link=https://evil]x[/link]", "[bold red]", "[@click=app.quit]x[/]")
LONG = 100_000  # characters in the long name


def hostile(tag: str, markup: str = "[/]") -> str:
    """`tag` and some markup first (so they show before any cut), then every escape."""
    return f"{tag}{markup}{ESCAPES}"


HOSTILE_ID = "\x1b]0;id\x07" + "7d05e9a3" * 3  # an imported run's id is data too
HOSTILE = {  # the visible start of each hostile value, as the tests look for it
    "name0": hostile("N0", "[bold red]"), "label0": hostile("L0", "[link=https://evil]x[/link]"),
    "model0": hostile("M0", "[@click=app.quit]x[/]"), "label1": hostile("L1"), "label2": hostile("L2"),
    "model2": hostile("M2"), "long": "LONG" + "x" * LONG + ESCAPES,
}


def fill_hostile_store(path: Path, hostile_id: bool = True) -> list[str]:
    """fill_store's three runs, then every string the views show replaced by a hostile one (as an import
    could bring): names (one 100 kB), labels, models, devices, statuses, errors, notes, flags, host fields,
    versions, environments, options, params, quality, and (`hostile_id`) the newest run's id, which
    store.queries.resolve_run refuses by id. Returns the run ids, oldest first."""
    import json

    ids = fill_store(path)
    old = ids[2]
    ids[2] = HOSTILE_ID if hostile_id else old
    con = sqlite3.connect(path)
    j = json.dumps
    host = {**HOST, "hostname": hostile("H0"), "cpu": hostile("CPU0"), "python": hostile("PY0"),
            "gpus": [{"index": 0, "name": hostile("GPU0"), "mem_total": 80 * 2**30}]}  # fmt: skip
    runtime = {"load_s": 1.25, "dtype": hostile("DT"), "schedule": hostile("SCH"),
               "versions": {"torch" + ESCAPES: hostile("V0")}, "env": {"OMP" + ESCAPES: hostile("ENV0")}}  # fmt: skip
    with con:
        con.execute("update run set id=? where id=?", (ids[2], old))
        for table in ("cell", "telemetry", "quality"):
            con.execute(f"update {table} set run_id=? where run_id=?", (ids[2], old))
        con.execute("update run_group set name=?", (hostile("GROUP"),))
        con.execute("update run set name=?, label=?, model=?, device=?, error=?, notes=?, host=?, runtime=?, config=?,"
                    " spec=? where id=?",
                    (HOSTILE["name0"], HOSTILE["label0"], HOSTILE["model0"], "cpu" + ESCAPES, hostile("E0"),
                     j([hostile("NOTE0"), "x" * LONG]), j(host), j(runtime),
                     j({"engine": "hf-generate", "precision": "fp32", "options": {"opt" + ESCAPES: hostile("O0")}}),
                     j({"model": "tiny", "worker_env": {"W" + ESCAPES: hostile("WE0")},
                        "workload": {"kind": "jsonl", "content": hostile("CONTENT")},
                        "timing": {"warmup": 1, "iters": 2, "repeats": 3}}), ids[0]))  # fmt: skip
        con.execute("update run set name=?, label=? where id=?", (HOSTILE["long"], HOSTILE["label1"], ids[1]))
        con.execute("update run set label=?, model=?, status=?, error=? where id=?",
                    (HOSTILE["label2"], HOSTILE["model2"], hostile("RS"), "x" * LONG, ids[2]))  # fmt: skip
        # Cells: an error, flags with hostile codes and reasons, an unknown status, extra-axis params.
        con.execute("update cell set status='failed', error=? where run_id=? and idx=0", (hostile("CE0"), ids[0]))
        con.execute("update cell set flags=? where run_id=? and idx=1",
                    (j([{"code": hostile("FC"), "reason": hostile("FR0")}, {"code": "load", "reason": "x" * LONG}]),
                     ids[0]))  # fmt: skip
        con.execute("update cell set flags=? where run_id=? and idx=1",
                    (j([{"code": "cv", "reason": hostile("FR1")}]), ids[1]))
        con.execute("update cell set status=?, error=? where run_id=? and idx=2",
                    (hostile("CS2"), hostile("CE2"), ids[2]))  # fmt: skip
        con.execute("update cell set params=? where run_id=? and idx=3", (j({"k" + ESCAPES: hostile("PV")}), ids[2]))
        con.execute("update telemetry set gpus=? where run_id=?",
                    (j([{"index": 0, "node": hostile("NODE"), "mem_used": 2**30, "mem_total": 2**34}]), ids[2]))
        con.execute("insert into quality (run_id, metric, value, details, created_at) values (?, ?, null, ?, ?)",
                    (ids[0], hostile("Q0"), j({"error": hostile("QE0")}), T0))  # fmt: skip
        con.execute("insert into quality (run_id, metric, value, details, created_at) "
                    "values (?, 'perplexity', 3.5, '{}', ?)", (ids[1], T0))  # fmt: skip
    con.close()
    return ids


def hostile_events() -> tuple[list[ev.Event], dict[int, tuple[int, int, int]], list[str]]:
    """scripted_events with hostile labels, log lines, errors, statuses, flags, devices and GPU nodes."""
    events, cells, _ = scripted_events()
    labels = [HOSTILE["label0"], HOSTILE["long"]]
    out: list[ev.Event] = []
    for e in events:
        if isinstance(e, ev.RunStarted):
            e.label = labels[int(e.run_id[0]) - 1]
        elif isinstance(e, ev.Log):
            e.message = hostile("LOG") + "\r" + hostile("LOG2")
        elif isinstance(e, ev.Loaded):
            e.device, e.dtype = hostile("DEV"), hostile("DT")
        elif isinstance(e, ev.CellFinished):
            if e.status != "done":
                e.status, e.error = hostile("ST"), hostile("ERR") + "\nsecond line"
            if e.result.get("flags"):
                e.result["flags"] = [{"code": hostile("FC"), "reason": hostile("FR")}]
        elif isinstance(e, ev.TelemetrySample):
            e.gpus = [{**g, "node": hostile("NODE")} for g in e.gpus]
        elif isinstance(e, ev.CellStarted):
            e.label = hostile("CELL")
        elif isinstance(e, ev.RunFinished):
            e.status, e.error = hostile("RF"), hostile("RE")
        out.append(e)
    return out, cells, labels


# --- what reaches the terminal ---------------------------------------------------------------------------------

# What the app itself writes: colours (SGR), cursor moves, and the progress display's line control.
OWN_CONTROLS = re.compile(r"\x1b\[[0-9;:]*m|\x1b\[\d+;\d+H|\x1b\[\?25[lh]|\x1b\[2K|\x1b\[1A|\r")
# Anything else below 0x20 (but newline), DEL and the C1 controls: a terminal would obey them.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def leaks(out: str) -> list[str]:
    """Control characters in `out` that the app did not write itself, each with some context."""
    rest = OWN_CONTROLS.sub("", out)
    return [repr(rest[max(m.start() - 30, 0) : m.end() + 30]) for m in CONTROL.finditer(rest)]


def visible(out: str) -> str:
    return OWN_CONTROLS.sub("", out)


def screen_output(app) -> str:
    """What the app's driver would write to the terminal for a full redraw of the current screen."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      legacy_windows=False, safe_box=False)  # fmt: skip
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.file.getvalue()


def fill_serving_store(path: Path) -> list[str]:
    """Two serving runs (llama-server f32 and q4_0) over concurrency 1-8 with fixed per-request timings: every
    request's TTFT and ITL grow with concurrency, so the runs trade interactivity for throughput. Returns ids."""
    from store.db import open_db
    from store.serving import serving_metrics
    from store.writer import RunWriter

    db = open_db(path, create=True)
    writer = RunWriter(db)
    slo = {"ttft": 0.05, "itl": 0.02}
    spec = {"model": "tiny", "grid": {"batch": [1, 2, 4, 8], "input_len": [64], "output_len": [16]},
            "load": {"slo": slo, "requests": 8}}  # fmt: skip
    group = writer.begin_group(spec, "serving fixture")
    ids, t = [], T0
    for n, (quant, speed) in enumerate((("f32", 1.0), ("q4_0", 1.7))):
        config = EngineRun(engine="serve:llama.cpp", quant=quant)
        cells = [Cell(b, 64, 16) for b in (1, 2, 4, 8)]
        run_id = writer.begin_run(group_id=group, model="tiny", engine="serve:llama.cpp", label=config.label(),
                                  config=config.model_dump(mode="json"), spec=spec, host=HOST,
                                  cells_total=len(cells), name=None)  # fmt: skip
        writer.set_runtime(run_id, {"load_s": 0.5, "dtype": quant, "schedule": "sequential"}, "cpu")
        for idx, cell in enumerate(cells):
            c = cell.batch
            itl = (0.004 + 0.003 * c) / speed
            ttft = (0.010 + 0.008 * c) / speed
            log = [{"i": i, "due": 0.0, "send": 0.001 * i, "ok": True, "ttft": ttft * (1 + 0.1 * (i % 3)),
                    "e2e": ttft + 15 * itl, "itl": [itl * (1 + 0.2 * ((i + k) % 4 == 0)) for k in range(15)],
                    "tokens": 16} for i in range(8)]  # fmt: skip
            wall = (ttft + 15 * itl) * 8 / c
            extra = {"requests_log": log, "wall_s": wall, "concurrency": c, "request_rate": "inf"}
            reps = [{"latencies_s": [wall], "ttft_s": [None], "tokens": [128], "extra": [extra], "round": r}
                    for r in range(2)]  # fmt: skip
            t += 2 * wall
            writer.add_cell(run_id, idx, cell, "done", finished_at=t, result={
                "repeats": reps, "started_at": t - 2 * wall, "peak_rss_bytes": 90 * 2**20,
                "metrics": {"serving": serving_metrics([extra, extra], slo)}})  # fmt: skip
        writer.finish_run(run_id, "done")
        ids.append(run_id)
        t += 60.0
    writer.close()
    db.close()
    fixed = [f"{n:x}" * 4 for n in (0x5E2FE001, 0x5E2FE002)]
    con = sqlite3.connect(path)
    with con:
        for run_id, new in zip(ids, fixed):
            con.execute("update run set id=?, created_at=?, finished_at=? where id=?", (new, T0, T0 + 30, run_id))
            con.execute("update cell set run_id=? where run_id=?", (new, run_id))
        con.execute("update run set group_id=?", ("1" * 32,))
        con.execute("update run_group set id=?, created_at=?", ("1" * 32, T0))
    con.close()
    return fixed
