"""Property: a valid export mutated at random paths with hostile values either is refused (one line,
exit 2, the database's rows unchanged, no new file) or imports, after which runs, compare, --replay and
every export of the imported runs work, and the JSON export imports again.

IMPORT_FUZZ_EXAMPLES sets how many documents to try (default 150, a few seconds per ten).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.tui_support import fill_store

EXAMPLES = int(os.environ.get("IMPORT_FUZZ_EXAMPLES", "150"))


def _nest(depth: int) -> Any:
    v: Any = [1]
    for _ in range(depth):
        v = {"k": v}
    return v


def _rich_doc(tmp: Path) -> tuple[dict, Path]:
    """The dashboard fixture's export, with every nested key the views read present somewhere."""
    from tui.cli import main

    src = tmp / "src.db"
    ids = fill_store(src)
    out = tmp / "x.json"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["export", *ids, "--format", "json", "-o", str(out), "--db", str(src)]) == 0
    doc = json.loads(out.read_text())
    doc.pop("comparison")
    breakdown = {"draft_ms_per_token": 1.0, "verify_ms_per_token": 2.0, "other_ms_per_token": 0.5}
    for n, r in enumerate(doc["runs"]):
        r["telemetry"] = r["telemetry"][:3]
        r["telemetry"][0]["gpus"][0]["node"] = "10.0.0.2"
        r["notes"] = [f"note {n}"]
        r["host"]["gpus"][0]["power_limit_w"] = 350.0
        r["host"]["ray"] = {"node_ip": "10.0.0.2"}
        r["host"]["env"] = {"OMP_NUM_THREADS": str(n)}
        r["runtime"]["env"] = {"OMP_NUM_THREADS": str(n + 1)}
        r["quality"] = [{"metric": "perplexity", "value": 12.5 + n, "details": {}, "created_at": r["created_at"]},
                        {"metric": "pass@1", "value": None, "details": {"error": "no sandbox"}, "created_at": 0.0}]
        r["cells"][0]["flags"] = [{"code": "load", "reason": "other processes used 1.5 of 16 cores"}]
    spec_run = doc["runs"][1]
    spec_run["config"]["spec"] = "ngram=4"
    spec_run["spec"]["workload"] = {"kind": "synthetic", "content": "code (stdlib source)"}
    for c in spec_run["cells"]:
        c["params"] = {"shared_len": 64}
        if c["status"] == "done":
            c["metrics"] = {
                "tp": {"size": 2, "peak_bytes_per_rank": [1 << 30, 1 << 30], "peak_gpu_bytes_per_rank": [1 << 30, 2 << 30]},
                "efficiency": {"j_per_token": 0.25, "bw_share": 0.7, "throttle": ["power"]},
                "reference": {"speedup": 1.4, "identical": True, "run_id": doc["runs"][0]["id"],
                              "label": "hf-generate bf16 sdpa", "breakdown": dict(breakdown)},
                "speculative": {"acceptance_rate": 0.6, "mean_accepted_len": 2.2, "tokens_per_step": 1.9,
                                "sequential": True},
                "breakdown": dict(breakdown),
            }  # fmt: skip
    return doc, src


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> "Base":
    tmp = tmp_path_factory.mktemp("fuzz")
    doc, _ = _rich_doc(tmp)
    template = tmp / "template.db"
    fill_store(template, runs=1)
    con = sqlite3.connect(template)
    con.execute("update run set id=?", ("e" * 32,))  # another run, so that the imported ones are all new
    con.execute("update cell set run_id=?", ("e" * 32,))
    con.execute("update telemetry set run_id=?", ("e" * 32,))
    con.commit()
    con.close()
    return Base({"doc": doc, "template": template, "paths": _paths(doc)})


class Base(dict):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example: not 70 kB of them
        return f"<the rich export: {len(self['paths'])} paths>"


def _paths(doc: Any) -> list[tuple]:
    out, stack = [], [((), doc)]
    while stack:
        path, v = stack.pop()
        if path:
            out.append(path)
        if isinstance(v, dict):
            stack.extend((path + (k,), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((path + (i,), x) for i, x in enumerate(v))
    return sorted(out, key=lambda p: (len(p), repr(p)))


HOSTILE_NUMBERS = [1e20, -1, -1.5, 0, -0.0, 1e308, -1e308, 1e-320, 5e-324, 1e-13, 1e13, 2**31, 2**62 + 1, 2**63,
                   2**64, 10**30, 4102444801, float("nan"), float("inf"), -float("inf"), True, False, None,
                   # the largest and smallest values the import accepts: the views must cope with them
                   4102444800, 1e12, 1e-12, 10**6, 10**7, 10**9, 2**62, 2**40, 1e15, -1e15, 2**31 - 1, 1024, 2**20,
                   2**24, 1e7, 1e6]  # fmt: skip
HOSTILE_STRINGS = ["\x1b[2J\x1b[31mred\x1b[0m", "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>',
                   "[bold red]x[/]", "=HYPERLINK(\"x\")", "\ud800", "\x00\r\n\t\x7f", "é€𝄞", "a" * 70_000, "",
                   "done", "oom", "running", "interrupted", "0" * 32, "f" * 32, "ABCDEF" * 5 + "ab", "1e20"]  # fmt: skip
# Keys the views read, most of them absent from the base document: "add" puts them anywhere.
KNOWN_KEYS = ["power_limit_w", "ray", "node_ip", "n_threads", "torch_threads", "executor", "worker_env", "cpu_affinity",
              "cpu_governor", "cuda_driver", "throttle", "peak_gpu_bytes_per_rank", "nvml_used_bytes_per_gpu",
              "peak_bytes_per_rank", "sequential",
              "identical", "speedup", "label", "run_id", "acceptance_rate", "mean_accepted_len", "tokens_per_step",
              "node", "index", "mem_used", "util", "power_w", "error", "kind", "content", "timing", "warmup", "round",
              "ttft_s", "tokens", "latencies_s", "env", "versions", "libraries", "schedule", "dtype", "load_s",
              "weight_bytes", "mem_total", "cpu_logical", "gpus", "name", "code", "reason", "tp", "efficiency",
              "reference", "speculative", "breakdown", "j_per_token", "bw_share", "draft_ms_per_token", "shared_len",
              "suffix_len", "spec", "options", "precision", "attention", "quant", "engine", "hostname", "cpu",
              "python", "workload", "flags", "notes", "params", "metrics", "repeats", "details", "comparison"]  # fmt: skip
hostile = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS), st.sampled_from(HOSTILE_STRINGS), st.integers(), st.floats(),
    st.text(max_size=20), st.booleans(), st.none(),
    st.lists(st.integers() | st.text(max_size=4) | st.none(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=4) | st.floats(), max_size=3),
    st.integers(1, 60).map(_nest),
)


@st.composite
def mutations(draw, paths: list[tuple]) -> list[tuple]:
    by_name: dict[str, list[tuple]] = {}  # named fields, where types and ranges matter most: each name alike
    for p in paths:
        if isinstance(p[-1], str):
            by_name.setdefault(p[-1], []).append(p)
    names = sorted(by_name)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "add", "dup"]))
        if draw(st.booleans()):
            path = draw(st.sampled_from(by_name[draw(st.sampled_from(names))]))
        else:
            path = draw(st.sampled_from(paths))
        out.append((kind, path, draw(hostile) if kind in ("set", "add") else None,
                    draw(st.sampled_from(KNOWN_KEYS) | st.text(min_size=1, max_size=8)) if kind == "add" else None))  # fmt: skip
    if draw(st.integers(0, 9)) == 0:  # now and then, damage the bytes themselves
        out.append(("bytes", draw(st.floats(0, 1)), draw(st.sampled_from([b"", b"\xff", b"\x00", b"}", b"NaN"])), None))
    return out


def _apply(doc: dict, muts: list[tuple]) -> tuple[dict, list[tuple]]:
    doc = copy.deepcopy(doc)
    byte_muts = []
    for kind, path, value, key in muts:
        if kind == "bytes":
            byte_muts.append((path, value))
            continue
        parent: Any = doc
        try:
            for p in path[:-1]:
                parent = parent[p]
            last = path[-1]
            target = parent[last]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the way there
        if kind == "set":
            parent[last] = value
        elif kind == "delete":
            del parent[last]
        elif kind == "add" and isinstance(target, dict):
            target[key] = value
        elif kind == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(target))
    return doc, byte_muts


def _main(*args: str) -> tuple[int, str, str]:
    from tui.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def _rows(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def _check_document(base: dict, muts: list[tuple], note=lambda outcome: None) -> None:
    doc, byte_muts = _apply(base["doc"], muts)
    data = json.dumps(doc, allow_nan=True).encode()
    for where, junk in byte_muts:
        cut = int(len(data) * where)
        data = data[:cut] + junk + data[cut:] if junk else data[:cut]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        f = tmp / "in.json"
        f.write_bytes(data)
        db = tmp / "existing.db"
        shutil.copy(base["template"], db)
        before = _rows(db)
        fresh = tmp / "fresh" / "new.db"
        rc, out, err = _main("import", str(f), "--db", str(db))
        if rc != 0:
            note("refused")
            assert rc == 2, (rc, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("codebench-tui: error: "), err
            assert "\x1b" not in lines[0]  # the file's text is never echoed raw
            assert _rows(db) == before
            assert _main("import", str(f), "--db", str(fresh))[0] == 2
            assert not (tmp / "fresh").exists()
            return
        note("imported")
        ids = list(dict.fromkeys(r["id"] for r in json.loads(data).get("runs", [])))
        assert _main("runs", "--limit", "0", "--db", str(db))[0] == 0
        if not ids:
            return
        assert _main("compare", *ids, "--db", str(db))[0] == 0
        assert _main("--replay", ids[-1], "--headless", "--db", str(db))[0] == 0
        for fmt in ("html", "csv", "md", "json"):
            rc, _, err = _main("export", *ids, "--format", fmt, "-o", str(tmp / f"out.{fmt}"), "--db", str(db))
            assert rc == 0, err
        rc, _, err = _main("import", str(tmp / "out.json"), "--db", str(tmp / "again.db"))
        assert rc == 0, err  # what we export, we import
        _dashboard_reads(db, ids)


def _dashboard_reads(db_path: Path, ids: list[str]) -> None:
    """What the dashboard computes from stored runs: History's rows, Compare's charts, a replay's state."""
    from types import SimpleNamespace

    from rich.console import Console

    from store.db import open_db
    from store.history import SORTS, run_page
    from store.noise import floors_of
    from store.results import load_results
    from tui.feed import ReplayFeed
    from tui.live_state import LiveState
    from tui.screens.history import HistoryScreen
    from tui.widgets.charts import memory_chart, speedup_grids, tokens_chart
    from tui.widgets.runtable import _width

    db = open_db(db_path, create=False)
    try:
        with db.session() as s:
            fake = SimpleNamespace(selected=set(), _mark=lambda run_id: " ")
            for sort in SORTS:
                for row in run_page(sort=sort, session=s):
                    assert all(_width(c) >= 0 for c in HistoryScreen._cells(fake, row))  # type: ignore[arg-type]
        results = load_results(db, ids, telemetry=True)
        floors, _ = floors_of(db, results)
        console = Console(file=io.StringIO(), width=100)
        for metric in ("tokens_per_s", "latency_s"):
            console.print(speedup_grids(results, 0, metric, floors))
        for chart in (tokens_chart(results, 80, 20), memory_chart(results, 80, 20)):
            if chart is not None:
                console.print(chart)
        for r in results:
            feed = ReplayFeed(r)
            info = feed.info
            state = LiveState(info.cells, info.labels, info.host_mem, info.host_cpus, info.estimate_s)
            for e in feed.timeline:
                state.apply(e)
            state.eta(feed.end)
            state.best_tokens
    finally:
        db.close()


def test_the_unmutated_rich_document_imports_and_reads(base):
    _check_document(base, [])


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def test_import_of_mutated_exports(base, data):
    _check_document(base, data.draw(mutations(base["paths"]), label="mutations"), event)
