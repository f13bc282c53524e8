"""Serving load without a server: arrivals, the load's parsing, SLO attainment and goodput on known timings, and
the CLI's refusals. The real servers are in tests/test_serve_llamacpp.py."""

from __future__ import annotations

import json
import math
import os
import statistics

import numpy as np
import pytest

from engines.base import SpecError
from engines.study.load import arrival_seed, arrivals, parse_isl_osl, parse_rates, parse_slo
from engines.study.schema import build_spec
from store.serving import goodput, percentile, request_meets, serving_metrics
from tests.helpers import cli


def _ks_exponential(gaps: list[float], rate: float) -> float:
    """Kolmogorov-Smirnov distance of the gaps from the exponential distribution of mean 1/rate."""
    xs = sorted(gaps)
    n = len(xs)
    return max(max((i + 1) / n - (1 - math.exp(-rate * x)), (1 - math.exp(-rate * x)) - i / n)
               for i, x in enumerate(xs))  # fmt: skip


def test_poisson_arrivals_fit_the_requested_rate():
    rate, n = 40.0, 4000
    offsets = arrivals(n, rate, 1.0, seed=7)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert offsets[0] == 0.0 and all(g >= 0 for g in gaps)
    # the rate within 5 % and the gaps exponential: KS distance under the 1 % critical value 1.63 / sqrt(n)
    assert abs((n - 1) / offsets[-1] / rate - 1) < 0.05
    assert _ks_exponential(gaps, rate) < 1.63 / math.sqrt(len(gaps))
    # the check can fail: gaps of twice the rate are far from this rate's distribution
    assert _ks_exponential([g / 2 for g in gaps], rate) > 1.63 / math.sqrt(len(gaps))


def test_burstiness_is_the_gamma_shape_and_keeps_the_mean():
    rate = 10.0
    for shape in (0.25, 1.0, 4.0):
        gaps = np.diff(arrivals(8000, rate, shape, seed=3))
        assert gaps.mean() == pytest.approx(1 / rate, rel=0.06)
        assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(shape), rel=0.08)  # gamma's cv


def test_one_seed_sends_identical_requests_and_inf_sends_at_once():
    assert arrivals(50, 5.0, 1.0, 11) == arrivals(50, 5.0, 1.0, 11)
    assert arrivals(50, 5.0, 1.0, 11) != arrivals(50, 5.0, 1.0, 12)
    assert arrivals(5, math.inf, 1.0, 11) == [0.0] * 5
    # the seed depends on the cell's shape, not on the run or its position
    assert arrival_seed(0, 4, 128, 2.0) == arrival_seed(0, 4, 128, 2.0) != arrival_seed(0, 8, 128, 2.0)


def test_load_parsing_and_its_one_line_errors():
    assert parse_rates("4, 1,inf,0.5") == [0.5, 1.0, 4.0, math.inf]
    assert parse_isl_osl("128/128,512/256,128/128") == [(128, 128), (512, 256)]
    assert parse_slo("ttft=200ms,itl=50ms,e2e=5s,tpot=0.04") == {"ttft": 0.2, "itl": 0.05, "e2e": 5.0, "tpot": 0.04}
    for bad, fn, words in [("0", parse_rates, "above 0"), ("-1", parse_rates, "above 0"), ("nan", parse_rates, "above 0"),
                           ("fast", parse_rates, "not a number"), ("\x1b[2J", parse_rates, "not a number"),
                           ("128", parse_isl_osl, "INPUT/OUTPUT"), ("0/5", parse_isl_osl, "from 1"),
                           ("ttfb=1s", parse_slo, "unknown metric"), ("ttft=soon", parse_slo, "not a duration"),
                           ("ttft=0ms", parse_slo, "above 0"), ("ttft=", parse_slo, "needs a limit")]:  # fmt: skip
        with pytest.raises(SpecError) as err:
            fn(bad)
        msg = str(err.value)
        assert words in msg and "\n" not in msg and "\x1b" not in msg, msg


def test_a_serving_study_is_concurrency_by_pairs_by_rate_and_saves_inf():
    spec = build_spec({"runs": [{"engine": "openai"}], "model": "http://127.0.0.1:1/v1",
                       "grid": {"batch": [1, 4], "isl_osl": "128/64,512/32"},
                       "load": {"request_rate": "inf,2", "slo": "ttft=1s", "requests": 16}})  # fmt: skip
    cells = spec.cells()
    assert [c.label() for c in cells[:2]] == ["b=1 in=128 out=64 request_rate=2", "b=1 in=128 out=64 request_rate=inf"]
    assert len(cells) == 8 and cells[1].params() == {"request_rate": "inf"}
    saved = json.loads(spec.to_json())
    assert saved["load"]["request_rate"] == [2.0, "inf"]  # JSON has no infinity
    assert build_spec(saved).cells() == cells


def _rec(ok=True, ttft=0.1, e2e=1.0, itl=(0.05, 0.05), tokens=10) -> dict:
    return {"ok": ok, "ttft": ttft, "e2e": e2e, "itl": list(itl), "tokens": tokens}


def test_attainment_and_goodput_on_known_timings():
    slo = {"ttft": 0.2, "itl": 0.1, "tpot": 0.1, "e2e": 2.0}
    records = [
        _rec(),  # meets every SLO: tpot = 0.9 / 9 = 0.1
        _rec(ttft=0.3),  # late first token
        _rec(itl=(0.05, 0.5)),  # one stall
        _rec(e2e=2.5, ttft=0.1),  # tpot 0.267, e2e over
        _rec(ok=False),  # a failed request meets nothing
    ]
    assert request_meets(records[0], slo) == {"ttft": True, "itl": True, "tpot": True, "e2e": True}
    assert request_meets(records[3], slo) == {"ttft": True, "itl": True, "tpot": False, "e2e": False}
    g = goodput(records, slo, wall_s=2.0)
    assert g["attainment"] == {"ttft": 0.6, "itl": 0.6, "tpot": 0.6, "e2e": 0.6, "all": 0.2}
    assert g["good_requests"] == 1 and g["goodput_rps"] == 0.5 and g["goodput_tps"] == 5.0


def test_serving_metrics_pool_every_pass_and_match_numpy():
    rng = np.random.default_rng(0)
    passes = []
    for _ in range(3):
        recs = [_rec(ttft=float(t), e2e=float(t) + 1.0, itl=list(map(float, rng.uniform(0, 0.2, 9))))
                for t in rng.uniform(0.01, 0.5, 20)]  # fmt: skip
        passes.append({"requests_log": recs, "wall_s": 4.0, "concurrency": 4, "request_rate": "inf"})
    m = serving_metrics(passes, {"ttft": 0.25})
    ttfts = [r["ttft"] for p in passes for r in p["requests_log"]]
    itls = [g for p in passes for r in p["requests_log"] for g in r["itl"]]
    assert m["requests"] == 60 and m["failed"] == 0 and m["wall_s"] == 12.0
    for p in (50, 90, 99):
        assert m["ttft_s"][f"p{p}"] == pytest.approx(np.percentile(ttfts, p))
        assert m["itl_s"][f"p{p}"] == pytest.approx(np.percentile(itls, p))
    assert m["goodput"]["attainment"]["all"] == pytest.approx(sum(t <= 0.25 for t in ttfts) / 60)
    assert percentile([3.0], 99) == 3.0 and statistics.median([1.0, 2.0]) == percentile([2.0, 1.0], 50)


@pytest.mark.parametrize("args, words", [
    (["--engine", "hf-generate", "--request-rate", "1"], "not a server engine"),
    (["--engine", "openai", "--model", "http://127.0.0.1:9/v1", "--slo", "ttft=\x1b]0;pwned\x07"], "not a duration"),
    (["--engine", "openai", "--model", "http://127.0.0.1:9/v1", "--isl-osl", "128/64", "--input-len", "32"],
     "--isl-osl gives"),
    (["--engine", "openai", "--model", "http://127.0.0.1:9/v1", "--request-rate", "0"], "above 0"),
    (["--engine", "openai", "--model", "http://127.0.0.1:9/v1", "--duration", "1e9"], "at most an hour"),
    (["--engine", "openai", "--model", "http://127.0.0.1:9/v1", "--duration", "soon\x1b[2J"], "not a duration"),
])  # fmt: skip
def test_cli_refuses_bad_load_in_one_line(tmp_path, args, words):
    proc = cli("run", *args, "--dry-run", db=tmp_path / "runs.db")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and words in err and "\n" not in err and "Traceback" not in err, proc.stderr
    assert "\x1b" not in err and "\x07" not in err
    assert not (tmp_path / "runs.db").exists()


def test_a_server_that_never_answers_exits_early_or_lacks_its_binary_is_one_clear_line(tmp_path):
    import socket

    from engines.adapters.openai.server_process import ServerProcess

    with pytest.raises(RuntimeError, match=r"^srv was not ready after 0.5 s \(raise --opt ready_timeout_s\)"):
        ServerProcess("srv", ["/bin/sleep", "30", "{port}"], ready_timeout_s=0.5).start()
    with pytest.raises(RuntimeError, match=r"^srv exited with code 1: .*before it was ready$"):
        ServerProcess("srv", ["/bin/false", "{port}"]).start()
    with pytest.raises(SpecError, match="server binary .*/nope does not exist"):
        ServerProcess("srv", [str(tmp_path / "nope")])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(SpecError, match=f"port {port} on 127.0.0.1 is in use"):
            ServerProcess("srv", ["/bin/sleep", "1"], port=port)


def test_serve_options_are_checked_before_anything_starts():
    from engines.adapters.llamacpp.serve import LlamaServer

    server, client = LlamaServer.split_options({"parallel": 4, "n_ctx": 2048, "timeout_s": 30,
                                                "server_args": ["--no-cont-batching"]})  # fmt: skip
    assert server == {"parallel": 4, "n_ctx": 2048, "server_args": ["--no-cont-batching"]} and client == {"timeout_s": 30}
    for bad, words in [({"parallel": 0}, "positive whole number"), ({"port": 70000}, "positive whole number"),
                       ({"server_args": "--x"}, "list of strings"), ({"server_pid": 1}, "does not apply"),
                       ({"n_gpu_layers": -2}, ">= -1"), ({"bogus\x1b[2J": 1}, "unknown serve:llama.cpp option")]:  # fmt: skip
        with pytest.raises(SpecError) as err:
            LlamaServer.split_options(bad)
        assert words in str(err.value) and "\x1b" not in str(err.value)


def test_server_args_cannot_point_a_server_at_a_precious_file(tmp_path):
    import sqlite3

    from engines.adapters.llamacpp.serve import LlamaServer
    from engines.adapters.vllm.serve import VLLMServer

    db, notes = tmp_path / "runs.db", tmp_path / "notes.txt"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    notes.write_text("mine")
    before = db.read_bytes(), notes.read_bytes()
    refused = [(LlamaServer, ["--log-file", str(db)], "--log-file would write to an existing file"),
               (LlamaServer, [f"--log-file={notes}"], "--log-file would write to an existing file"),
               (LlamaServer, ["-lcd", str(notes)], "-lcd would write to an existing file"),
               (LlamaServer, ["--verbose", str(db)], "a SQLite database"),
               (VLLMServer, [f"--hf-config-path={db}"], "a SQLite database")]  # fmt: skip
    for engine, args, words in refused:
        with pytest.raises(SpecError) as err:
            engine.split_options({"server_args": args})
        assert words in str(err.value) and "leave it out or name a new file" in str(err.value), err.value
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # opening it to read would block: such a path is no database
    assert LlamaServer.split_options({"server_args": ["--verbose", str(fifo), "/dev/stdin"]})[0]
    fresh = str(tmp_path / "server.log")  # a new file is the server's to write
    assert LlamaServer.split_options({"server_args": ["--log-file", fresh]})[0]["server_args"] == ["--log-file", fresh]
    assert (db.read_bytes(), notes.read_bytes()) == before


def test_an_open_loop_user_waiting_for_its_arrival_is_not_in_flight(tmp_path):
    """Users claim their next request at once and sleep until its arrival: only a sent request counts as in
    flight (Live once showed every waiting user as a request on the wire)."""
    from engines.study import events as ev
    from engines.study.load import arrival_seed, arrivals

    # a request takes about 30 ms; this cell's seeded arrivals come 0.85 s or more apart
    due = arrivals(4, 1.0, 1.0, arrival_seed(0, 3, 8, 1.0))
    assert min(b - a for a, b in zip(due, due[1:])) > 0.8, due
    seen = _run_events(tmp_path, batch=3, output_len=4, load={"requests": 4, "request_rate": [1.0]})
    reqs = [e for e in seen if isinstance(e, ev.Requests)]
    assert len(reqs) >= 3 and reqs[-1].done == 4, reqs
    assert max(e.in_flight for e in reqs) <= 1, [e.in_flight for e in reqs]


def _run_events(tmp_path, batch: int, output_len: int, load: dict) -> list:
    """One serving cell against _QueueingServer through the real runner; every event the worker sent."""
    from engines.harness.runner import Runner
    from store.db import open_db

    srv = _QueueingServer()
    spec = build_spec({"model": srv.url, "runs": [{"engine": "openai"}],
                       "grid": {"batch": [batch], "input_len": [8], "output_len": [output_len]},
                       "timing": {"warmup": 0, "iters": 1, "repeats": 1}, "load": load})  # fmt: skip
    seen: list = []
    db = open_db(tmp_path / "runs.db", create=True)
    try:
        Runner(spec, db, subscribers=[seen.append]).run()
    finally:
        db.close()
        srv.httpd.shutdown()
    return seen


class _QueueingServer:
    """A test double: each request's first token comes `unit` s x (requests in flight when it arrived), then a
    token every 2 ms, so TTFT rises with concurrency in a known way. With `by_arrival`, the count is the request's
    place among those that came since the server was last idle: a pass's k-th request waits k units even if a
    starved client connects it after earlier ones finished."""

    def __init__(self, unit: float = 0.02, by_arrival: bool = False):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        lock, state = threading.Lock(), {"in_flight": 0, "since_idle": 0}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                body = json.dumps({"data": [{"id": "queue"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                import time

                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    state["in_flight"] += 1
                    state["since_idle"] += 1
                    ahead = state["since_idle" if by_arrival else "in_flight"]
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    time.sleep(unit * ahead)
                    for _ in range(req.get("max_tokens", 4)):
                        chunk = {"choices": [{"text": " a", "index": 0, "finish_reason": None}]}
                        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                        self.wfile.flush()
                        time.sleep(0.002)
                    last = {"choices": [{"text": "", "finish_reason": "length"}],
                            "usage": {"completion_tokens": req.get("max_tokens", 4)}}
                    self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
                    self.wfile.flush()
                finally:
                    with lock:
                        state["in_flight"] -= 1
                        state["since_idle"] *= state["in_flight"] > 0

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_the_peak_goodput_search_bisects_to_the_known_peak(tmp_path):
    # a pass's k-th request waits k x 100 ms: 5 is the last concurrency under 550 ms, with 50 ms of slack
    srv = _QueueingServer(unit=0.1, by_arrival=True)
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "openai", "--model", srv.url, "--concurrency", "1:17", "--input-len", "8",
               "--output-len", "4", "--slo", "ttft=550ms", "--attainment", "1", "--search", "peak-goodput",
               "--warmup", "0", "--iters", "1", "--repeats", "1", "--quiet", db=db, timeout=300)  # fmt: skip
    srv.httpd.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(cli("export", "last", "--format", "json", db=db, check=True).stdout)["runs"][0]
    (search,) = run["runtime"]["search"]["searches"]
    assert search["peak_concurrency"] == 5 and search["bounded"]
    path = [(p["concurrency"], p["met"]) for p in search["path"]]
    assert path == [(8, False), (4, True), (6, False), (5, True)], path  # bisection over 1..16, then done
    measured = {c["batch"] for c in run["cells"] if c["status"] == "done"}
    assert measured == {4, 5, 6, 8}
    skipped = [c for c in run["cells"] if c["status"] == "skipped"]
    assert len(skipped) == 12 and all("peak-goodput search did not need it" in c["error"] for c in skipped)
    table = cli("--replay", "last", "--headless", db=db, env={"COLUMNS": "200"}, check=True).stdout
    assert "peak concurrency at ≥100% SLO attainment, input_len=8 output_len=4: 5, goodput" in table
    assert "measured 8✗ 4✓ 6✗ 5✓" in table


def _passes(db, cell_filter=lambda c: True) -> list[list[dict]]:
    run = json.loads(cli("export", "last", "--format", "json", db=db, check=True).stdout)["runs"][0]
    return [e["requests_log"] for c in run["cells"] if cell_filter(c) for rep in c["repeats"] for e in rep["extra"]]


def test_a_duration_pass_sends_until_it_ends_and_a_count_can_end_it_first(tmp_path):
    from engines.study.load import arrival_seed, arrivals

    srv = _QueueingServer()
    base = ["run", "--engine", "openai", "--model", srv.url, "--concurrency", "2", "--input-len", "8",
            "--output-len", "4", "--warmup", "0", "--iters", "2", "--repeats", "1", "--quiet"]  # fmt: skip
    db = tmp_path / "rate.db"
    cli(*base, "--request-rate", "20", "--duration", "1s", db=db, check=True, timeout=300)
    due = [t for t in arrivals(100, 20.0, 1.0, arrival_seed(0, 2, 8, 20.0)) if t < 1.0]
    for log in _passes(db):  # exactly the arrivals before the end, every prompt its own
        assert [r["due"] for r in log] == pytest.approx(due, abs=1e-6) and all(r["ok"] for r in log)
        assert len({r["prompt"] for r in log}) == len(log)
    db = tmp_path / "closed.db"  # closed loop: more requests than the prompts made before the pass
    cli(*base, "--duration", "0.6s", db=db, check=True, timeout=300)
    first, second = _passes(db)
    # asked before the end (the write may land after it: the connect comes between)
    assert len(first) > 8 and max(r["send"] - r["connect"] for r in first + second) < 0.6
    assert len({r["prompt"] for r in first}) == len(first)
    assert [r["prompt"] for r in first[:8]] == [r["prompt"] for r in second[:8]]  # the same requests, in order
    db = tmp_path / "count.db"
    cli(*base, "--duration", "30s", "--requests", "5", db=db, check=True, timeout=300)
    assert [len(log) for log in _passes(db)] == [5, 5]  # the count came first
    header = cli("--replay", "last", "--headless", db=db, env={"COLUMNS": "200"}, check=True).stdout
    assert "load: all at once; 5 requests or 30 s per pass, whichever first" in header
    srv.httpd.shutdown()


def test_compare_shows_serving_metrics_and_the_pareto_frontier(tmp_path):
    """The CLI's side; the Compare screen's Pareto view is in tests/test_tui_snapshots.py."""
    srv = _QueueingServer()
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "openai", "--model", srv.url, "--concurrency", "1,2,4", "--input-len", "8",
               "--output-len", "4", "--slo", "ttft=70ms", "--warmup", "0", "--iters", "1", "--repeats", "2",
               "--quiet", db=db, timeout=300)  # fmt: skip
    srv.httpd.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the CLI: serving metrics compare, and the frontier lists its points
    out = cli("compare", "last", "--metric", "slo_attainment", "--pareto", "goodput", "--no-chart", db=db,
              env={"COLUMNS": "200"}, check=True).stdout  # fmt: skip
    assert "SLO met" in out and "Pareto frontier: goodput tok/s per host against tok/s per user" in out
    md = cli("export", "last", "--format", "md", db=db, check=True).stdout
    assert "Pareto frontier: tok/s per host" in md and "requests ok/sent" in md
    # the same cells served from 2 GPUs (a server's tensor_parallel_size): tok/s per GPU is half the total
    data = json.loads(cli("export", "last", "--format", "json", db=db, check=True).stdout)
    (run,) = data["runs"]
    run.update(id="f" * 32, device="cuda:0", config={**run["config"], "options": {"tensor_parallel_size": 2}})
    (tmp_path / "tp2.json").write_text(json.dumps(data))
    cli("import", str(tmp_path / "tp2.json"), db=tmp_path / "tp2.db", check=True)

    def frontier(db, unit):
        out = cli("compare", "last", "--pareto", "throughput", "--no-chart", db=db, env={"COLUMNS": "200"},
                  check=True).stdout  # fmt: skip
        assert f"Pareto frontier: tok/s per {unit} against tok/s per user" in out, out
        return [[float(x) for x in line.split("│")[-3:-1]] for line in out.splitlines() if "c=" in line]

    host, gpu = frontier(db, "host"), frontier(tmp_path / "tp2.db", "GPU")
    assert len(host) >= 1 and [x for u, d in host for x in (u, d / 2)] == pytest.approx(sum(gpu, []), rel=2e-3)




def test_failed_requests_and_merged_token_gaps_flag_the_cell():
    from store.flags import cell_flags

    recs = [_rec(itl=(0.01, 0.000005, 0.01, 0.000001)), _rec(ok=False)]  # half the gaps under 20 us
    m = serving_metrics([{"requests_log": recs, "wall_s": 1.0}], None)
    assert m["merged_gap_share"] == 0.5 and m["ttft_merged_share"] == 0.0
    codes = {f["code"]: f["reason"] for f in cell_flags([], {"serving": m})}
    assert codes["failed-requests"].startswith("1 of 2 requests failed") and "50% of the gaps" in codes["merged"]
    first = serving_metrics([{"requests_log": [_rec(itl=(0.0, 0.01))] + [_rec()] * 9, "wall_s": 1.0}], None)
    assert first["ttft_merged_share"] == 0.1
    (flag,) = cell_flags([], {"serving": first})
    assert "the first token of 10% of requests" in flag["reason"] and "TTFT tails are shaky" in flag["reason"]
    clean = serving_metrics([{"requests_log": [_rec()], "wall_s": 1.0}], None)
    assert cell_flags([], {"serving": clean}) == []


def test_setup_fields_give_the_clis_load_and_read_it_back():
    from engines.study.schema import Load
    from tui.planning import load_texts, parse_load

    assert parse_load("", "", "", "none") == (None, "")
    load, err = parse_load("1,inf", "16", "ttft=200ms,itl=50ms", "peak-goodput")
    assert err == "" and load["request_rate"] == [1.0, math.inf] and load["requests"] == 16
    assert load_texts(Load(**load)) == ("1,inf", "16", "ttft=200ms,itl=50ms", "peak-goodput")
    load, err = parse_load("", "16, 2m", "", "none")  # a count, a duration, or both: whichever comes first
    assert err == "" and load["requests"] == 16 and load["duration_s"] == 120
    assert load_texts(Load(**load))[1] == "16,120s"
    for args, words in [(("0", "", "", "none"), "above 0"), (("", "x", "", "none"), "whole number"),
                        (("", "2h", "", "none"), "whole number"), (("", "90m", "", "none"), "at most an hour"),
                        (("", "", "", "peak-goodput"), "needs an SLO"), (("", "", "ttft=\x1b[2J", "none"), "duration")]:  # fmt: skip
        load, err = parse_load(*args)
        assert load is None and words in err and "\x1b" not in err


def test_live_shows_a_serving_cells_requests_and_its_latency_strip(tmp_path):
    """The worker's Requests events through the real runner, folded by Live's state and drawn as Live draws them."""
    from engines.study import events as ev
    from tui.live_state import LiveState
    from tui.screens.live import requests_line

    seen = _run_events(tmp_path, batch=2, output_len=40, load={"requests": 12})
    reqs = [e for e in seen if isinstance(e, ev.Requests)]
    assert len(reqs) >= 2, "a pass of 12 requests at 2 in flight lasts seconds: several reports"
    assert all(0 <= e.in_flight <= 2 and e.total == 12 for e in reqs)
    assert reqs[-1].done == 12 and reqs[-1].failed == 0 and reqs[-1].in_flight == 0
    assert sum(len(e.ttft_ms) for e in reqs) == 12  # each finished request's TTFT reported once
    state = LiveState({0: (2, 8, 40)}, ["openai"])
    for e in seen:
        state.apply(e)
    state.apply(reqs[-1])  # the last report after the cell, as it reaches Live
    line = requests_line(state.current["requests"], state.ttft_ms, state.itl_ms).plain
    assert "0 in flight · 12/12 done · 0 failed" in line and "TTFT " in line and "ITL " in line
    (done,) = state.results  # the finished cell's line: its requests and latency beside tok/s
    assert done.serving.startswith("12/12 ok · TTFT p99 ") and " ms" in done.serving
    # a replay rebuilds the strip from the stored requests: the same counts and every finished request's TTFT
    from store.db import open_db
    from store.results import load_results
    from tui.feed import timeline
    from tui.replay_requests import request_events

    db = open_db(tmp_path / "runs.db")
    (stored,) = load_results(db, ["last"])
    replayed = [e for e in timeline(stored) if isinstance(e, ev.Requests)]
    assert len(replayed) >= 2 and all(0 <= e.in_flight <= 2 and e.total == 12 for e in replayed)
    assert (replayed[-1].done, replayed[-1].failed, replayed[-1].in_flight) == (12, 0, 0)
    stored_ttft = sorted(v for e in replayed for v in e.ttft_ms)  # stored to the microsecond
    assert stored_ttft == pytest.approx(sorted(v for e in reqs for v in e.ttft_ms), abs=1e-3)
    cell = stored.cells[0]  # hostile stored values: skipped, and an absurd pass length stays a few thousand events
    cell["repeats"][0]["extra"][0].update(wall_s=1e300, duration_s=True)
    cell["repeats"][0]["extra"][0]["requests_log"][:2] = [{"send": "\x1b[2J", "e2e": None}, "<b>", ]
    events = request_events("r", cell)
    assert 1 <= len(events) <= 2000 and events[-1].done == 10 and events[-1].total == 0


def test_the_search_can_bisect_the_request_rate_axis(tmp_path):
    srv = _QueueingServer()
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "openai", "--model", srv.url, "--concurrency", "8", "--requests", "8",
               "--request-rate", "1,2,4,8,16,32,64,inf", "--input-len", "8", "--output-len", "4",
               "--slo", "ttft=50ms", "--attainment", "1", "--search", "peak-goodput", "--search-axis", "rate",
               "--warmup", "0", "--iters", "1", "--repeats", "1", "--quiet", db=db, timeout=300)  # fmt: skip
    srv.httpd.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(cli("export", "last", "--format", "json", db=db, check=True).stdout)["runs"][0]
    search = run["runtime"]["search"]
    assert search["axis"] == "request_rate"
    (line,) = search["searches"]
    assert line["concurrency"] == 8 and line["candidates"] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, "inf"]
    path = line["path"]
    assert 1 <= len(path) <= 4 and path[0]["request_rate"] == 8.0  # the middle of eight, then one side
    rank = {v: i for i, v in enumerate(line["candidates"])}
    met = [rank[p["request_rate"]] for p in path if p["met"]]
    missed = [rank[p["request_rate"]] for p in path if not p["met"]]
    assert all(m < x for m in met for x in missed)
    assert line["peak_request_rate"] == (line["candidates"][max(met)] if met else None)
    # everything at once: all eight in flight, the last TTFT 160 ms: inf misses, low rates meet it
    table = cli("--replay", "last", "--headless", db=db, env={"COLUMNS": "200"}, check=True).stdout
    assert "peak request rate at ≥100% SLO attainment, input_len=8 output_len=4 concurrency=8:" in table


def test_a_hostile_run_name_stays_text_in_the_pareto_and_search_lines(tmp_path):
    import sqlite3

    from tests.tui_support import fill_serving_store

    db = tmp_path / "serving.db"
    fill_serving_store(db)
    hostile = "<script>alert(1)</script>\x1b[31m[red]x[/red]"
    con = sqlite3.connect(db)
    with con:
        con.execute("update run set label=?, runtime=json_set(runtime, '$.search', json(?))",
                    (hostile, json.dumps({"axis": "concurrency", "target": 1, "searches": [
                        {"input_len": "\x1b]0;t\x07", "peak_concurrency": "<b>", "path": [{"concurrency": "\x1b[2J"}]}]})))
    html = cli("export", "last", "--format", "html", db=db, check=True).stdout
    assert "Pareto frontier" in html and "<script>" not in html and "\x1b" not in html
    md = cli("export", "last", "--format", "md", db=db, check=True).stdout
    assert "Pareto frontier" in md and "\x1b" not in md and "\x07" not in md
    out = cli("compare", "last", "--pareto", "throughput", "--no-chart", db=db, env={"COLUMNS": "200"}, check=True)
    assert "\x1b" not in out.stdout and "peak concurrency" not in out.stdout  # compare shows the frontier only
    replay = cli("--replay", "last", "--headless", db=db, env={"COLUMNS": "200"}, check=True).stdout
    assert "peak concurrency at ≥100% SLO attainment" in replay and "\x1b" not in replay and "\x07" not in replay
    # stored serving figures of the wrong type (an import holds anything): Live's line and the metrics skip them
    from store.serving import brief, cell_value

    hostile_cell = {"metrics": {"serving": {"failed": "\x1b[2J", "requests": None, "ttft_s": "x", "goodput": [1]}}}
    assert brief(hostile_cell) == "" and cell_value(hostile_cell, "ttft_p99") is None
    assert cell_value(hostile_cell, "goodput_rps") is None
