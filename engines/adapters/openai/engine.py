"""Any OpenAI-compatible server by URL (vLLM serve, TGI, llama.cpp server, SGLang): streaming completions.

Standard library only (sockets + threads), so this engine needs no extra. The "model" is the
server's base URL, e.g. http://127.0.0.1:8000/v1. A cell of batch size B keeps at most B requests in
flight (the concurrency), all at once unless a serving load paces them (engines/study/load.py). Each is
timed from the write of its request (the connect is stored apart; timed_http.py takes the kernel's
clock): TTFT to the first streamed token, ITL between streamed chunks, E2E to the end of the stream,
TPOT = (E2E - TTFT) / (n - 1).
A request that fails (refused, HTTP error, cut stream, timeout) is recorded with its reason;
a call where every request failed raises.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from engines.adapters.openai.timed_http import open_stream
from engines.base import Engine, GenerateResult, LoadInfo, SpecError
from engines.measure.procmem import peak_rss
from engines.study.events import REQUEST_SAMPLES
from engines.study.load import INF, MAX_REQUESTS, arrival_times, stored_rate
from store.serving import summary as percentiles  # p50/p90/p99 and mean, as the store recomputes them

OPTIONS = {
    "served_model": "model name sent to the server (default: the first of GET /models)",
    "timeout_s": "per-request limit in seconds, connect to end of stream (default 600)",
    "connect_timeout_s": "TCP connect limit in seconds (default 10)",
    "prompt_format": "ids, text or auto (default auto: token ids if the server takes them)",
    "ignore_eos": "send ignore_eos + min_tokens so every request makes max_tokens (default auto)",
    "tokenizer": "tokenizer.json used for text prompts and token counts (default: tiny's)",
    "request_rate": "requests per second, Poisson arrivals (default: all at once)",
    "api_key": "sent as Authorization: Bearer KEY",
    "extra_body": "dict merged into every request body",
    "server_pid": "pid of a local server process, for telemetry",
}


class AllRequestsFailed(RuntimeError):
    """Every request of a call failed: the cell fails with the reasons."""


@dataclass
class Outcome:
    """One request, as the client saw it. Times are perf_counter seconds from its own start."""

    index: int
    ok: bool = False
    error: str = ""
    text: str = ""
    pieces: list[str] = field(default_factory=list)  # text of each chunk, in order
    token_ids: list[int] | None = None  # from the server, when it sends them
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk carrying output
    e2e_s: float | None = None
    usage_tokens: int | None = None
    finish_reason: str | None = None
    start: float = 0.0  # perf_counter at send
    kernel_stamped: bool = False  # chunk times are the kernel's receive times (timed_http.py)
    connect_s: float | None = None  # TCP connect, before `start` (plain HTTP)
    finished: bool = False  # set by its user thread once stream() returned: the reporter reads only then


def parse_options(options: dict[str, Any], name: str = "openai") -> dict[str, Any]:
    """The client's options checked; `name` is the engine the user asked for (serve:vllm runs this client)."""
    for key in options:
        if key not in OPTIONS:
            raise SpecError(f"unknown {name} option '{key}' (known: {', '.join(OPTIONS)})")
    o = dict(options)
    for key, default in (("timeout_s", 600.0), ("connect_timeout_s", 10.0)):
        value = o.setdefault(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
            raise SpecError(f"{name} option {key} must be a positive number of seconds, got {str(value)[:40]!r}")
    if o.setdefault("prompt_format", "auto") not in ("auto", "ids", "text"):
        raise SpecError(f"{name} option prompt_format must be auto, ids or text, got {str(o['prompt_format'])[:40]!r}")
    if o.setdefault("ignore_eos", "auto") not in ("auto", True, False):
        raise SpecError(f"{name} option ignore_eos must be true, false or auto, got {str(o['ignore_eos'])[:40]!r}")
    rate = o.get("request_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
        raise SpecError(f"{name} option request_rate must be a positive number (requests/s), got {str(rate)[:40]!r}")
    if not isinstance(o.setdefault("extra_body", {}), dict):
        raise SpecError(f"{name} option extra_body must be a JSON object, e.g. --opt 'extra_body={{\"top_k\": 1}}'")
    return o


def base_url(url: str) -> str:
    """http://host:port[/prefix] with /v1 appended when no path is given."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(f"'{url}' is not a server URL; give one like http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timeout after {timeout:g} s"
    if isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError,
                        BrokenPipeError)):  # fmt: skip
        return f"stream cut ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


class Client:
    """Blocking HTTP against one base URL; one connection per request, like independent users."""

    def __init__(self, url: str, connect_timeout: float, api_key: str | None = None):
        self.url = url
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path
        self.connect_timeout = connect_timeout
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                               context=ssl.create_default_context())  # fmt: skip
        return http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)

    def get_json(self, path: str, at_root: bool = False) -> Any:
        """GET prefix + path, or path from the server's root (/version, /metrics live beside /v1)."""
        base = self.prefix.removesuffix("/v1") if at_root else self.prefix
        conn = self.connect()
        try:
            conn.request("GET", base + path, headers=self.headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"GET {self.url}{path}: HTTP {resp.status}: {body[:300].decode(errors='replace')}")
            return json.loads(body)
        finally:
            conn.close()

    def stream(self, body: dict[str, Any], out: Outcome, timeout: float) -> None:
        """POST /completions with stream=true; fills `out`. Never raises. Plain HTTP is read with the kernel's
        receive times (timed_http.py); HTTPS through http.client, timed when read."""
        deadline = out.start + timeout
        sock = None
        try:
            if self.https:
                return self._stream_tls(body, out, deadline, timeout)
            payload = json.dumps(body).encode()
            asked = out.start

            def sent(at: float) -> None:  # the clock starts when the request is written; the connect is apart
                out.start = at
                out.connect_s = at - asked

            status, _, resp, raw, sock = open_stream(self.host, self.port, self.prefix + "/completions", payload,
                                                     self.headers, self.connect_timeout, deadline, sent)  # fmt: skip
            if status >= 400:
                text = b"".join(resp.readline()[0] for _ in range(20)).decode(errors="replace")
                out.error = f"HTTP {status}: {text.strip().replace(chr(10), ' ')[:300]}"
                return
            done, last = False, None
            while True:
                line, at = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                last = at
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                self._chunk(json.loads(data), out, at)
            out.kernel_stamped = raw.kernel_times > 0 and raw.transmit_stamped
            out.e2e_s = (last if last is not None else time.perf_counter()) - out.start
            if not done:
                out.error = f"stream cut after {len(out.chunk_times)} chunks (no [DONE])"
                return
            out.ok = True
        except Exception as exc:  # noqa: BLE001 - every failure becomes the request's reason
            self._failed(out, exc, timeout)
        finally:
            if sock is not None:
                sock.close()

    @staticmethod
    def _failed(out: Outcome, exc: BaseException, timeout: float) -> None:
        out.error = _reason(exc, timeout)
        if out.chunk_times and "stream cut" not in out.error and "timeout" not in out.error:
            out.error = f"stream cut after {len(out.chunk_times)} chunks ({out.error})"

    def _stream_tls(self, body: dict[str, Any], out: Outcome, deadline: float, timeout: float) -> None:
        conn = None
        try:
            conn = self.connect()
            conn.request("POST", self.prefix + "/completions", body=json.dumps(body), headers=self.headers)
            sock = conn.sock  # getresponse() drops conn.sock when the server will close; the stream keeps it
            sock.settimeout(max(0.001, deadline - time.perf_counter()))
            resp = conn.getresponse()
            if resp.status >= 400:
                text = resp.read(2000).decode(errors="replace").strip().replace("\n", " ")
                out.error = f"HTTP {resp.status}: {text[:300]}"
                return
            done = False
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                self._chunk(json.loads(data), out, time.perf_counter())
            out.e2e_s = time.perf_counter() - out.start
            if not done:
                out.error = f"stream cut after {len(out.chunk_times)} chunks (no [DONE])"
                return
            out.ok = True
        except Exception as exc:  # noqa: BLE001
            self._failed(out, exc, timeout)
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    def _chunk(msg: dict[str, Any], out: Outcome, at: float | None) -> None:
        now = (at if at is not None else time.perf_counter()) - out.start
        if "error" in msg:
            raise RuntimeError(f"server error in stream: {str(msg['error'])[:300]}")
        usage = msg.get("usage") or {}
        if usage.get("completion_tokens") is not None:
            out.usage_tokens = int(usage["completion_tokens"])
        for choice in msg.get("choices") or []:
            text = choice.get("text") or ""
            ids = choice.get("token_ids")
            if text or ids:
                out.chunk_times.append(now)
                out.text += text
                out.pieces.append(text)
                if ids:
                    out.token_ids = (out.token_ids or []) + list(ids)
            if choice.get("finish_reason"):
                out.finish_reason = choice["finish_reason"]


class OpenAIEngine(Engine):
    name = "openai"

    def load(self, model_dir: str, device: str) -> LoadInfo:
        t0 = time.perf_counter()
        o = self.opts = parse_options(self.config.get("options") or {})
        self.url = base_url(model_dir)
        self.client = Client(self.url, float(o["connect_timeout_s"]), o.get("api_key"))
        self.tokenizer = self._tokenizer(o.get("tokenizer"))
        warnings: list[str] = []
        served: list[str] = []
        try:
            served = [m["id"] for m in self.client.get_json("/models").get("data", [])]
        except Exception as exc:  # noqa: BLE001
            if not o.get("served_model"):
                raise RuntimeError(
                    f"cannot list models at {self.url}/models ({_reason(exc, o['connect_timeout_s'])}); "
                    "start the server, check the URL, or name the model with --opt served_model=NAME"
                ) from None
            warnings.append(f"GET /models failed: {_reason(exc, o['connect_timeout_s'])}")
        self.model = o.get("served_model") or (served[0] if served else None)
        if not self.model:
            raise RuntimeError(f"{self.url}/models lists no model; name one with --opt served_model=NAME")
        if served and self.model not in served:
            warnings.append(f"served_model '{self.model}' is not listed by the server ({', '.join(served)})")
        self.features, probe = self._probe(warnings)
        self.load_warnings = warnings
        self.server_pids = _process_tree(o.get("server_pid"), warnings)
        versions = {}
        try:  # vLLM and SGLang answer GET /version; others do not, which is fine
            versions["server"] = str(self.client.get_json("/version", at_root=True).get("version"))
        except Exception:  # noqa: BLE001
            pass
        return LoadInfo(
            load_s=time.perf_counter() - t0,
            device="server",
            dtype="server",
            versions=versions,
            extra={"url": self.url, "served_model": self.model, "served_models": served,
                   "features": self.features, "probe": probe, "warnings": warnings,
                   "server_pid": o.get("server_pid")},  # fmt: skip
        )

    @staticmethod
    def _tokenizer(path: str | None):
        from pathlib import Path

        from engines.models.workloads import load_tokenizer

        if path is None:
            from engines.models.tiny import ensure_tiny

            path = str(ensure_tiny() / "tokenizer.json")
        return load_tokenizer(Path(path))

    # --- request bodies -------------------------------------------------------------------

    def _body(self, prompt: list[int], n: int, features: dict[str, bool]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt if features["ids"] else self.tokenizer.decode(prompt, skip_special_tokens=False),
            "max_tokens": n,
            "temperature": 0.0,
            "stream": True,
        }
        if features["usage"]:
            body["stream_options"] = {"include_usage": True}
        if features["ignore_eos"]:
            body.update(ignore_eos=True, min_tokens=n)
        if features["token_ids"]:
            body["return_token_ids"] = True  # vLLM: the generated ids ride along with each chunk
        if features["no_penalty"]:
            # llama.cpp servers default to repeat_penalty 1.1, which is not greedy decoding
            body.update(repeat_penalty=1.0, repetition_penalty=1.0)
        body.update(self.opts["extra_body"])
        return body

    def _probe(self, warnings: list[str]) -> tuple[dict[str, bool], list[str]]:
        """Which request fields the server takes: the prompt form first, then each optional field alone.

        Servers differ: llama-cpp-python refuses id prompts (with a 500) and ignores unknown fields;
        strict servers refuse unknown fields with a 4xx. Each try is a 2-token request.
        """
        o = self.opts
        feats = {"ids": False, "usage": False, "ignore_eos": False, "token_ids": False, "no_penalty": False}
        tried: list[str] = []
        prompt = self.tokenizer.encode("def main():\n", add_special_tokens=False).ids or [2]

        def attempt() -> Outcome:
            out = Outcome(0, start=time.perf_counter())
            self.client.stream(self._body(prompt, 2, feats), out, float(o["timeout_s"]))
            tried.append(f"{_label(feats)}: {'ok' if out.ok else out.error}")
            return out

        forms = {"auto": [True, False], "ids": [True], "text": [False]}[o["prompt_format"]]
        for ids in forms:
            feats["ids"] = ids
            first = attempt()
            if first.ok:
                break
        if not first.ok:
            warnings.append(f"probe request failed: {first.error}")
            feats.update(usage=True, ignore_eos=o["ignore_eos"] is not False, no_penalty=True)
            return feats, tried
        optional = ["usage", "no_penalty", "token_ids"] + (["ignore_eos"] if o["ignore_eos"] is not False else [])
        for name in optional:
            feats[name] = True
            out = attempt()
            if name == "ignore_eos" and o["ignore_eos"] is True:
                continue  # asked for: keep it even if the server objects, so its refusal is on record
            # kept only if accepted and, for what the server sends back, actually sent
            feats[name] = out.ok and {"usage": out.usage_tokens is not None,
                                      "token_ids": out.token_ids is not None}.get(name, True)  # fmt: skip
        return feats, tried

    # --- generate -------------------------------------------------------------------------

    def configure_load(self, concurrency: int, rate: float, burstiness: float, seed: int, *,
                       duration_s: float | None = None, max_requests: int | None = None,
                       more_prompts: Callable[[int, int], list[list[int]]] | None = None) -> None:  # fmt: skip
        """A serving cell's load (the worker calls it before the cell): at most `concurrency` requests in
        flight, sent at gamma-distributed arrival times (engines/study/load.py); rate inf sends at once. With
        `duration_s` a pass sends until then (or `max_requests`), taking prompts past the given ones from
        `more_prompts(first_index, count)`; they are kept for the cell's later passes."""
        self.load_shape = {"concurrency": concurrency, "rate": rate, "burstiness": burstiness, "seed": seed,
                           "duration_s": duration_s, "max_requests": max_requests}  # fmt: skip
        self._more_prompts = more_prompts
        self._pool: tuple[list, list, list] = ([], [], [])  # prompts, bodies and digests past the given ones

    def _prompt_pool(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list, list, list]:
        """The pass's prompts, request bodies and digests (made before the pass), then those a duration kept."""
        extra, bodies, digests = getattr(self, "_pool", ([], [], []))
        return (prompts + extra, [self._body(p, max_new_tokens, self.features) for p in prompts] + bodies,
                [_digest(p) for p in prompts] + digests)  # fmt: skip

    def _grow_pool(self, pool: tuple[list, list, list], max_new_tokens: int) -> bool:
        """Duration passes that outrun their prompts: the next ones from the worker (about as many again), kept."""
        more = getattr(self, "_more_prompts", None)
        if more is None:
            return False
        prompts, bodies, digests = pool
        fresh = more(len(prompts), max(len(prompts), 16))
        if not fresh:
            return False
        for p in fresh:
            prompts.append(p)
            bodies.append(self._body(p, max_new_tokens, self.features))
            digests.append(_digest(p))
            for kept, item in zip(self._pool, (p, bodies[-1], digests[-1])):
                kept.append(item)
        return True

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        o = self.opts
        timeout = float(o["timeout_s"])
        pool = self._prompt_pool(prompts, max_new_tokens)
        load = getattr(self, "load_shape", None) or {}
        rate = load.get("rate", o.get("request_rate") or INF)
        duration = load.get("duration_s")
        limit = (load.get("max_requests") or MAX_REQUESTS) if duration else len(prompts)
        next_due = arrival_times(rate, load.get("burstiness", 1.0), load.get("seed", 0))
        slots = max(1, min(load.get("concurrency") or len(prompts), limit))
        outs: list[Outcome] = []
        due: list[float] = []
        take = threading.Lock()
        go = threading.Event()
        ended = threading.Event()  # the duration is over, or the limit reached: no user takes another request
        t0 = 0.0

        def past_end(at: float, now: float) -> bool:
            return bool(duration) and (at >= duration or now - t0 >= duration)

        def claim() -> tuple[Outcome, float] | None:  # the next request and when it was asked; None: pass over
            with take:
                i = len(outs)
                at = next(next_due) if i < limit and not ended.is_set() else None
                now = time.perf_counter()
                done = at is None or past_end(at, now)
                if not done and i >= len(pool[0]):  # a prompt made now: the end is checked again after it
                    done = not self._grow_pool(pool, max_new_tokens)
                    now = time.perf_counter()
                    done = done or past_end(at, now)
                if done:
                    ended.set()
                    return None
                due.append(at)
                outs.append(Outcome(i))
                return outs[-1], now  # asked at the instant the end was checked

        def user() -> None:  # one simulated user: its next request at its arrival time or when free
            go.wait()
            while (claimed := claim()) is not None:
                out, asked = claimed
                if asked < t0 + due[out.index]:  # claimed before its arrival (open loop): asked then
                    time.sleep(max(0.0, t0 + due[out.index] - time.perf_counter()))
                    asked = time.perf_counter()
                out.start = asked  # in flight from here (the reporter counts started, unfinished requests)
                self.client.stream(pool[1][out.index], out, timeout)
                out.finished = True

        threads = [threading.Thread(target=user, daemon=True) for _ in range(slots)]
        for th in threads:
            th.start()
        t0 = time.perf_counter()
        go.set()
        self._report(outs, threads, None if duration else limit)
        wall = time.perf_counter() - t0
        result = self._result(outs, max_new_tokens, wall, t0)
        result.extra["requests_log"] = _records(outs, due, t0, result.extra["completion_tokens"], pool[2])
        stamped = [o.kernel_stamped for o in outs if o.ok]
        result.extra["clock"] = "kernel receive time" if stamped and all(stamped) else "read time"
        result.extra["concurrency"] = slots
        result.extra["request_rate"] = stored_rate(rate)
        if duration:
            result.extra["duration_s"] = duration
        if load:  # a serving cell: the pass's first-token time would include arrival gaps; TTFT is per request
            result.ttft_s = None
        return result

    def _report(self, outs: list[Outcome], threads: list[threading.Thread], total: int | None,
                every: float = 0.5) -> None:  # fmt: skip
        """Wait for the users; meanwhile hand `self.progress` (set by the worker) the requests in flight, done and
        failed, and the TTFT and ITL of those finished since the last call. Reads only what the users publish:
        a request's start before it is sent, and the rest once its user marked it finished."""
        report = getattr(self, "progress", None)
        seen: set[int] = set()
        while True:
            for th in threads:
                th.join(every if report else None)
                if report is None or th.is_alive():
                    break
            alive = any(th.is_alive() for th in threads)
            if report is not None:
                sent = list(outs)  # users append to it
                finished = [o for o in sent if o.finished]
                fresh = [o for o in finished if o.index not in seen and o.ok]
                seen.update(o.index for o in finished)
                report({"in_flight": sum(1 for o in sent if o.start and not o.finished),
                        "done": sum(1 for o in finished if o.ok), "failed": sum(1 for o in finished if not o.ok),
                        "total": total or 0,  # 0: a duration pass, open-ended
                        "ttft_ms": [o.chunk_times[0] * 1000 for o in fresh if o.chunk_times][-REQUEST_SAMPLES:],
                        "itl_ms": [(b - a) * 1000 for o in fresh for a, b in zip(o.chunk_times, o.chunk_times[1:])]
                        [-REQUEST_SAMPLES:]})  # fmt: skip
            if not alive:
                return

    def _ids(self, out: Outcome) -> list[int]:
        if out.token_ids is not None:
            return out.token_ids
        # Text only: encode chunk by chunk. Servers stream about one token a chunk; encoding the
        # joined text would merge across token boundaries and miscount.
        ids = [t for piece in out.pieces for t in self.tokenizer.encode(piece, add_special_tokens=False).ids]
        if out.usage_tokens is not None and len(ids) != out.usage_tokens:
            # The chunks' text does not map back to the tokens the server counted (llama-server may stream two
            # tokens in one chunk, and " '{" may be one token streamed and two re-encoded): the count is the
            # server's, the ids are unknown (-1)
            return [-1] * out.usage_tokens
        return ids

    def _check(self, out: Outcome, n: int) -> None:
        """Turn a clean stream that ended short without a reason into a failure (e.g. an interrupted one)."""
        count = out.usage_tokens if out.usage_tokens is not None else len(self._ids(out))
        if out.ok and count < n and out.finish_reason != "stop":
            out.ok = False
            out.error = f"stream ended early: {count} of {n} tokens, finish_reason {out.finish_reason}"

    def _result(self, outs: list[Outcome], n: int, wall: float, t0: float) -> GenerateResult:
        for out in outs:
            self._check(out, n)
        good = [out for out in outs if out.ok]
        failed = [{"index": o.index, "reason": o.error, "chunks": len(o.chunk_times)} for o in outs if not o.ok]
        if not good:
            reasons = sorted({f["reason"] for f in failed})
            raise AllRequestsFailed(f"all {len(outs)} requests to {self.url} failed: {'; '.join(reasons)[:1000]}")
        tokens = [self._ids(out) if out.ok else [] for out in outs]
        counts = [(out.usage_tokens if out.usage_tokens is not None else len(ids)) if out.ok else 0
                  for out, ids in zip(outs, tokens)]  # fmt: skip
        ttft = [out.chunk_times[0] for out in good if out.chunk_times]
        tpot = [(out.e2e_s - out.chunk_times[0]) / (c - 1)
                for out, c in zip(outs, counts) if out.ok and out.chunk_times and c > 1]  # fmt: skip
        itl = [b - a for out in good for a, b in zip(out.chunk_times, out.chunk_times[1:])]
        extra: dict[str, Any] = {
            "requests": len(outs),
            "requests_ok": len(good),
            "failed": failed,
            "short": [{"index": o.index, "tokens": c, "reason": "stopped at EOS: the server ignored ignore_eos"}
                      for o, c in zip(outs, counts) if o.ok and c < n],  # fmt: skip
            "completion_tokens": counts,
            "token_count_source": sorted({"usage" if o.usage_tokens is not None else "token ids" for o in good}),
            "token_ids_source": sorted({"server" if o.token_ids is not None else "unknown" if -1 in ids else "chunk text"
                                        for o, ids in zip(outs, tokens) if o.ok}),
            "finish_reasons": [out.finish_reason for out in outs],
            "wall_s": wall,
            "request_throughput": len(good) / wall,
            "output_tokens_per_s": sum(counts) / wall,
            "ttft_s": percentiles(ttft),
            "tpot_s": percentiles(tpot),
            "itl_s": percentiles(itl),
            "e2e_s": percentiles([out.e2e_s for out in good]),
            "ttft_per_request_s": [out.chunk_times[0] if out.ok and out.chunk_times else None for out in outs],
            "e2e_per_request_s": [out.e2e_s if out.ok else None for out in outs],
            "chunks_per_request": [len(out.chunk_times) for out in outs],
        }
        if self.server_pids:
            extra["server_peak_rss_bytes"] = peak_rss(self.server_pids)
        # the batch's TTFT as the other engines mean it: until every good request has its first token
        firsts = [out.start - t0 + out.chunk_times[0] for out in good if out.chunk_times]
        return GenerateResult(tokens=tokens, ttft_s=max(firsts) if firsts else None, extra=extra)

    def reset_peak_memory(self) -> None:
        for pid in self.server_pids:  # a local server's peak RSS, per cell (Linux; root or the same user)
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def is_oom(self, exc: BaseException) -> bool:
        return False  # the server's memory is not ours; its refusals are recorded per request


def _digest(prompt: list[int]) -> str:
    return hashlib.sha256(json.dumps(prompt).encode()).hexdigest()[:12]


def _records(outs: list[Outcome], due: list[float], t0: float, counts: list[int],
             digests: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Every request's timings, stored with the cell so any percentile or SLO can be recomputed: its arrival
    (`due`) and send offsets from the pass's start, TTFT, E2E, the gaps between streamed chunks, and a digest of
    its prompt (two runs with one seed send the same requests)."""

    def us(t: float | None) -> float | None:
        return None if t is None else round(t, 6)

    return [{"i": out.index, "due": us(due[out.index]), "send": us(out.start - t0), "ok": out.ok,
             "prompt": digests[out.index],
             "connect": us(out.connect_s), "kernel_clock": out.kernel_stamped,
             "ttft": us(out.chunk_times[0]) if out.chunk_times else None, "e2e": us(out.e2e_s),
             "itl": [us(b - a) for a, b in zip(out.chunk_times, out.chunk_times[1:])],
             "tokens": count, **({"error": out.error[:300]} if out.error else {})}
            for out, count in zip(outs, counts)]  # fmt: skip


def _process_tree(pid: Any, warnings: list[str]) -> list[int]:
    """A local server's pid and its children's (vLLM's engine core and workers are children)."""
    if pid is None:
        return []
    import psutil

    try:
        proc = psutil.Process(int(pid))
        return [proc.pid] + [c.pid for c in proc.children(recursive=True)]
    except (psutil.Error, ValueError) as exc:
        warnings.append(f"server_pid {pid}: {exc}; no server memory figures")
        return []


def _label(feats: dict[str, bool]) -> str:
    return ",".join(k for k, v in feats.items() if v) or "plain text"
