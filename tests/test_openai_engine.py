"""The openai engine against a real llama-cpp-python OpenAI server on tiny, and against failures.

The failure servers are real HTTP servers on 127.0.0.1 (our own, a few lines of http.server)
that answer 500, 404 for a wrong model, cut the stream, stall, or stream like vLLM does.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engines.adapters.openai.engine import AllRequestsFailed, OpenAIEngine, base_url, parse_options, percentiles
from engines.base import SpecError
from engines.models.workloads import synthetic_prompts
from engines.quality.agreement import format_line, summary
from engines.study.load import arrivals
from store.flags import cell_flags
from store.serving import serving_metrics
from tests.helpers import FAST, cell_statuses, cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(gguf: Path, port: int) -> subprocess.Popen:
    # interrupt_requests False: by default llama-cpp-python cuts a running stream when the next request arrives
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--model_alias", "tiny",
           "--verbose", "False", "--interrupt_requests", "False"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def gguf(tiny_model) -> Path:
    from engines.adapters.llamacpp.gguf import convert

    return convert(tiny_model, "f32")


@pytest.fixture(scope="module")
def llama_server(gguf):
    port = free_port()
    proc = start_llama_server(gguf, port)
    yield f"http://127.0.0.1:{port}/v1", proc
    stop(proc)


@pytest.fixture(scope="module")
def prompts(tiny_model) -> list[list[int]]:
    return synthetic_prompts(tiny_model / "tokenizer.json", 4, 32, seed=0)


def engine(url: str, **options) -> OpenAIEngine:
    eng = OpenAIEngine({"options": options})
    eng.load(url, "cpu")
    return eng


# --- the real llama.cpp server -------------------------------------------------------------


def test_sweep_over_concurrency_1_2_4(llama_server, prompts):
    url, proc = llama_server
    eng = engine(url, server_pid=proc.pid)  # its memory is sampled per call
    assert eng.model == "tiny"  # from GET /v1/models
    # it takes text prompts only, streams no usage and no ids; repeat_penalty 1.0 must be sent (its default is 1.1)
    assert eng.features == {"ids": False, "usage": False, "ignore_eos": True, "token_ids": False, "no_penalty": True}
    for b in (1, 2, 4):
        res = eng.generate(prompts[:b], 16)
        x = res.extra
        assert [len(t) for t in res.tokens] == [16] * b and x["completion_tokens"] == [16] * b
        assert x["requests_ok"] == b and x["failed"] == [] and x["finish_reasons"] == ["length"] * b
        assert x["chunks_per_request"] == [16] * b  # llama-cpp-python streams one token a chunk
        # a client starved by 2 cores reads several tokens' segments at once, stamped alike: token gaps of 0 are
        # allowed only where the cell would carry the "merged" flag (store/flags.py) that says ITL is shaky
        merged = "merged" in [f["code"] for f in cell_flags([], {"serving": serving_metrics([x], None)})]
        for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            p = x[metric]
            assert 0 <= p["p50"] <= p["p90"] <= p["p99"] and (p["p50"] > 0 or merged and metric != "e2e_s"), (metric, p)
        assert x["e2e_s"]["p50"] > x["ttft_s"]["p50"] or merged and x["e2e_s"]["p50"] == x["ttft_s"]["p50"]
        assert x["output_tokens_per_s"] == pytest.approx(16 * b / x["wall_s"])
        assert x["request_throughput"] == pytest.approx(b / x["wall_s"])
        assert 0 < res.ttft_s <= x["wall_s"]
        assert x["server_peak_rss_bytes"] > 20 * 2**20  # python + llama.cpp + tiny's 21 MB of weights
        for ttft, e2e in zip(x["ttft_per_request_s"], x["e2e_per_request_s"]):
            assert 0 < ttft <= e2e <= x["wall_s"] and (ttft < e2e or merged)


def test_server_tokens_agree_with_hf_fp32(llama_server, prompts, tiny_model, capsys):
    """The text the server streams, encoded chunk by chunk, is HF's greedy token sequence."""
    from engines.adapters.hf.engine import HFGenerate

    hf = HFGenerate({"precision": "fp32", "attention": "sdpa", "options": {}})
    hf.load(str(tiny_model), "cpu")
    try:
        want = hf.generate(prompts, 16).tokens
    finally:
        hf.unload()
    got = engine(llama_server[0]).generate(prompts, 16).tokens
    s = summary(want, got)
    with capsys.disabled():
        print("\n" + format_line("openai (llama-cpp-python server, f32) vs hf fp32", s))
    assert s["token_agreement"] == 1.0, format_line("openai vs hf", s)


def test_cli_sweep_against_the_server(llama_server, tmp_path):
    url, _ = llama_server
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "openai", "--model", url, "--batch", "1,2,4", "--input-len", "32",
               "--output-len", "16", *FAST, db=db)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cell_statuses(db) == [(1, 32, 16, "done"), (2, 32, 16, "done"), (4, 32, 16, "done")]


def test_server_stopped_mid_run(gguf, prompts):
    port = free_port()
    proc = start_llama_server(gguf, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        eng = engine(url)
        killer = threading.Timer(1.5, proc.kill)  # the first stream is running (about 4 s), three wait their turn
        killer.start()
        t = time.perf_counter()
        with pytest.raises(AllRequestsFailed) as info:
            eng.generate(prompts, 1500)  # about 4 s a request on tiny; the server is serial
        assert time.perf_counter() - t < 30
        assert "stream cut" in str(info.value), info.value
        proc.wait(10)
        with pytest.raises(AllRequestsFailed, match="connection refused"):
            eng.generate(prompts[:2], 4)  # the next cell finds nobody listening
    finally:
        stop(proc)


def test_nothing_listening():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(RuntimeError, match="connection refused.*start the server"):
        engine(url)
    eng = engine(url, served_model="tiny")  # named model: the load goes on, every request fails
    assert any("connection refused" in w for w in eng.load_warnings)
    with pytest.raises(AllRequestsFailed, match="all 2 requests .* failed: connection refused"):
        eng.generate([[5, 6], [7, 8]], 4)


# --- servers of our own that misbehave on purpose ------------------------------------------


class FakeServer(ThreadingHTTPServer):
    """mode: ok (streams like vLLM: token ids + usage), 500, cut, stall, half (odd requests get 500)."""

    daemon_threads = True

    def __init__(self, mode: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = mode
        self.bodies: list[dict] = []
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        self.all_in = threading.Condition(self.lock)
        self.gather = 0  # a request waits (up to 5 s) until this many are in flight: concurrency without timing
        self.count = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, data: dict) -> None:
        blob = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.bodies.append(body)
            srv.count += 1
            nth = srv.count
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
            srv.all_in.notify_all()
            if body.get("max_tokens") != 2:  # not a load-time probe
                srv.all_in.wait_for(lambda: srv.inflight >= srv.gather, timeout=5)
        try:
            self._answer(srv, body, nth)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test): nothing to answer
        finally:
            with srv.lock:
                srv.inflight -= 1

    def _answer(self, srv: FakeServer, body: dict, nth: int) -> None:
        if body["model"] != "fake-model":
            return self._json(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
        probe = body["max_tokens"] == 2  # the engine's load-time probes; the tests ask for more tokens
        if srv.mode == "500" or (srv.mode == "half" and body["prompt"] in ([2], [4])):
            return self._json(500, {"error": {"message": "boom"}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        n = body["max_tokens"]
        chunks = 3 if srv.mode == "cut" and not probe else n
        for k in range(chunks):
            time.sleep(0.02)
            if srv.mode == "stall" and not probe and k == 2:
                time.sleep(3)
            choice = {"index": 0, "text": f"t{k} ", "finish_reason": "length" if k == n - 1 else None}
            if body.get("return_token_ids"):
                choice["token_ids"] = [100 + k]
            self.wfile.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            self.wfile.flush()
        if chunks < n:
            return  # the connection closes without [DONE]
        if body.get("stream_options", {}).get("include_usage"):
            usage = {"prompt_tokens": 2, "completion_tokens": n, "total_tokens": n + 2}
            self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def fake():
    servers: list[FakeServer] = []

    def make(mode: str) -> FakeServer:
        srv = FakeServer(mode)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_vllm_like_server_gives_ids_usage_and_real_concurrency(fake):
    srv = fake("ok")
    eng = engine(srv.url)
    assert eng.features == {"ids": True, "usage": True, "ignore_eos": True, "token_ids": True, "no_penalty": True}
    srv.gather = 4  # each request is held until four are in: only a client that sends them together gets 4
    res = eng.generate([[1, 2], [3, 4], [5, 6], [7, 8]], 8)
    assert res.tokens == [[100 + k for k in range(8)]] * 4
    assert res.extra["token_count_source"] == ["usage"] and res.extra["token_ids_source"] == ["server"]
    assert srv.max_inflight == 4  # four requests in flight at once: the cell's concurrency
    sent = srv.bodies[-1]
    assert sent["prompt"] in ([1, 2], [3, 4], [5, 6], [7, 8])
    assert sent["ignore_eos"] is True and sent["min_tokens"] == 8 and sent["temperature"] == 0.0
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_http_500_fails_every_request(fake):
    srv = fake("500")
    eng = engine(srv.url, prompt_format="ids", ignore_eos=True)
    with pytest.raises(AllRequestsFailed, match=r"all 3 requests .* failed: HTTP 500: .*boom"):
        eng.generate([[1], [2], [3]], 4)


def test_some_requests_fail_the_rest_are_measured(fake):
    srv = fake("half")
    eng = engine(srv.url)
    res = eng.generate([[1], [2], [3], [4]], 5)
    x = res.extra
    assert x["requests_ok"] == 2 and len(x["failed"]) == 2
    assert all(f["reason"].startswith("HTTP 500") for f in x["failed"])
    failed = {f["index"] for f in x["failed"]}
    assert [len(t) for i, t in enumerate(res.tokens)] == [0 if i in failed else 5 for i in range(4)]
    assert x["output_tokens_per_s"] == pytest.approx(10 / x["wall_s"])


def test_cut_stream(fake):
    srv = fake("cut")
    eng = engine(srv.url)
    with pytest.raises(AllRequestsFailed, match=r"stream cut after 3 chunks"):
        eng.generate([[1], [2]], 10)


def test_timeout(fake):
    srv = fake("stall")
    eng = engine(srv.url, timeout_s=0.5)
    t = time.perf_counter()
    with pytest.raises(AllRequestsFailed, match=r"timeout after 0.5 s"):
        eng.generate([[1], [2]], 10)
    assert time.perf_counter() - t < 2.5


def test_wrong_model_name(fake):
    srv = fake("ok")
    eng = engine(srv.url, served_model="no-such-model")
    assert any("not listed" in w for w in eng.load_warnings)
    with pytest.raises(AllRequestsFailed, match=r"HTTP 404: .*no-such-model.* does not exist"):
        eng.generate([[1], [2]], 4)


# --- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,match",
    [
        ({"bogus": 1}, "unknown openai option 'bogus'"),
        ({"timeout_s": 0}, "positive number of seconds"),
        ({"prompt_format": "tokens"}, "auto, ids or text"),
        ({"request_rate": -1}, "positive number"),
        ({"extra_body": [1]}, "JSON object"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(SpecError, match=match):
        parse_options(options)


def test_base_url():
    assert base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    assert base_url("http://h:1") == "http://h:1/v1"
    with pytest.raises(SpecError, match="not a server URL"):
        base_url("127.0.0.1:8000")


def test_percentiles():
    p = percentiles([float(v) for v in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1) and p["p99"] == pytest.approx(99.01)
    assert percentiles([])["p50"] is None


def test_request_rate_spreads_arrivals(fake):
    srv = fake("ok")
    eng = engine(srv.url, request_rate=20.0)
    offsets = arrivals(4, 20.0, 1.0, 0)  # the request_rate option: Poisson, the load's arrivals with seed 0
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] > 0.05  # Poisson, mean gap 50 ms
    res = eng.generate([[1]] * 4, 2)
    assert res.extra["requests_ok"] == 4 and res.extra["request_rate"] == 20.0
    assert res.extra["wall_s"] >= offsets[-1]  # the last request left when its arrival time came


def test_registry_lists_openai_with_nothing_to_install():
    from engines.registry import check, expand

    (run,) = expand(["openai"])
    assert check(run, "cpu").ok and run.precision is None
