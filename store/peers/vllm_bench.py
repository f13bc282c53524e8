"""vLLM's `vllm bench serve` (--save-result) and `vllm bench throughput` (--output-json) results as codebench runs.

bench serve: one serving cell of concurrency max_concurrency (or every prompt at once), request_rate as the
cell's rate, and the mean input and output lengths. With --save-detailed every request's TTFT, ITLs and latency
are there: they become the cell's request log, so codebench recomputes every percentile and SLO from them;
otherwise the file's own mean, median and p99 are stored. Either way the file's figures stay under metrics.peer.

bench throughput: one cell of batch num_requests. Its JSON holds no input or output lengths: they come from
`import --input-len/--output-len` (crosscheck passes them).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from store.peers.common import UNKNOWN, PeerError, cell, document, num, run, verbatim
from store.serving import serving_metrics

SERVE, THROUGHPUT = "vllm bench serve", "vllm bench throughput"
SERVE_KEYS = ("duration", "completed", "total_input_tokens", "total_output_tokens", "request_throughput")
THROUGHPUT_KEYS = ("elapsed_time", "num_requests", "total_num_tokens", "requests_per_second", "tokens_per_second")
DETAILED = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "errors", "generated_texts")
METRICS = ("ttft", "tpot", "itl", "e2el")


def sniff(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return None
    if all(k in doc for k in SERVE_KEYS) and "mean_ttft_ms" in doc:
        return "serve"
    if all(k in doc for k in THROUGHPUT_KEYS):
        return "throughput"
    return None


def _created(doc: dict, mtime: float) -> float:
    try:
        return datetime.strptime(str(doc.get("date")), "%Y%m%d-%H%M%S").timestamp()
    except ValueError:
        return mtime


def _requests(doc: dict, source: str) -> list[dict[str, Any]] | None:
    """--save-detailed's per-request lists as codebench's request log; None without them."""
    if not all(isinstance(doc.get(k), list) for k in ("ttfts", "itls", "latencies", "output_lens")):
        return None
    n = len(doc["latencies"])
    if not all(len(doc[k]) == n for k in ("ttfts", "itls", "output_lens")) or n > 1_000_000:
        raise PeerError(f"{source}: the per-request lists have different lengths (a damaged file?)")
    errors = doc.get("errors") if isinstance(doc.get("errors"), list) and len(doc["errors"]) == n else [""] * n
    starts = doc.get("start_times") if isinstance(doc.get("start_times"), list) and len(doc["start_times"]) == n \
        else None  # fmt: skip
    t0 = min((s for s in starts or [] if isinstance(s, (int, float))), default=0.0)
    out = []
    for i in range(n):
        where = f"{source}: request {i}"
        itl = doc["itls"][i] if isinstance(doc["itls"][i], list) else []
        ok = not errors[i]
        rec = {"i": i, "ok": ok, "tokens": num(doc["output_lens"], i, where, int) if ok else 0,
               "ttft": num(doc["ttfts"], i, where) if ok else None, "e2e": num(doc["latencies"], i, where) if ok else None,
               "itl": [num(itl, j, where) for j in range(len(itl))] if ok else []}  # fmt: skip
        if starts:
            rec["send"] = num(starts, i, where) - t0
        if not ok:
            rec["error"] = str(errors[i])[:300]
        out.append(rec)
    return out


def _summary(doc: dict, metric: str, where: str) -> dict[str, float | None]:
    """The file's own mean, median and p-values of one metric, in seconds."""
    out: dict[str, float | None] = {}
    for key, name in ((f"mean_{metric}_ms", "mean"), (f"median_{metric}_ms", "p50"), (f"p90_{metric}_ms", "p90"),
                      (f"p99_{metric}_ms", "p99")):  # fmt: skip
        out[name] = num(doc, key, where) / 1000 if doc.get(key) is not None else None
    return out


def _serve(doc: dict, source: str, digest: str, mtime: float) -> dict[str, Any]:
    completed, failed = num(doc, "completed", source, int), int(doc.get("failed") or 0)
    if completed < 1:
        raise PeerError(f"{source}: no request completed; nothing to import")
    duration = num(doc, "duration", source)
    total_in, total_out = num(doc, "total_input_tokens", source, int), num(doc, "total_output_tokens", source, int)
    sent = completed + failed
    concurrency = doc.get("max_concurrency") or doc.get("num_prompts") or sent
    concurrency = num({"max_concurrency": concurrency}, "max_concurrency", source, int)
    rate = doc.get("request_rate")
    rate = "inf" if rate in (None, "inf") else num(doc, "request_rate", source)
    in_len, out_len = max(1, round(total_in / completed)), max(1, round(total_out / completed))
    if not (0 < duration < 1e7 and 1 <= concurrency <= 10**6):
        raise PeerError(f"{source}: duration {duration:g} s and concurrency {concurrency} are not a measurement")
    log = _requests(doc, source)
    extra = {"wall_s": duration, "concurrency": concurrency, "request_rate": rate}
    if log is not None:
        figures = serving_metrics([{**extra, "requests_log": log}], None)
    else:
        figures = {"passes": 1, "requests": sent, "failed": failed, "concurrency": concurrency, "request_rate": rate,
                   "wall_s": duration, "request_throughput": completed / duration, "output_tokens_per_s": total_out / duration,
                   **{f"{'e2e' if m == 'e2el' else m}_s": _summary(doc, m, source) for m in METRICS}}  # fmt: skip
    peer = {"tool": SERVE, **{k: v for k, v in doc.items() if k not in DETAILED and isinstance(v, (int, float, str))
                              and not isinstance(v, bool)}}  # fmt: skip
    c = cell(0, concurrency, in_len, out_len, [duration], total_out, params={"request_rate": rate}, peer=peer,
             at=_created(doc, mtime))  # fmt: skip
    c["ttft_s"] = None  # per request: the serving figures hold it
    if log is not None:
        c["repeats"][0]["extra"] = [{**extra, "requests_log": log}]
    c["metrics"]["serving"] = figures
    notes = [f"imported from {SERVE} --save-result ({os.path.basename(source)}); input and output lengths are the "
             "means of the requests", f"{SERVE} fields: " + verbatim({k: v for k, v in doc.items() if k not in DETAILED})]
    if log is None:
        notes.append(f"without --save-detailed the file holds no per-request timings: the percentiles are {SERVE}'s own")
    version = str(doc.get("vllm_version") or "unknown")
    model = str(doc.get("model_id") or "?")
    r = run(digest, "serve", tool=SERVE, version=version, fmt="json", source=source, engine="openai", model=model,
            label=f"{SERVE} {doc.get('backend') or ''}".strip(), device="server", created_at=c["started_at"],
            cells=[c], notes=notes, spec={"load": {"request_rate": None if rate == "inf" else [rate], "requests": sent,
                                                     "burstiness": doc.get("burstiness") or 1.0}})  # fmt: skip
    return document(digest, f"{SERVE} {os.path.basename(source)}", r["created_at"], [r])


def _throughput(doc: dict, source: str, digest: str, mtime: float, hints: dict[str, Any]) -> dict[str, Any]:
    in_len, out_len = hints.get("input_len"), hints.get("output_len")
    if not in_len or not out_len:
        raise PeerError(f"{source}: {THROUGHPUT}'s JSON holds no input or output lengths; give them: "
                        "import FILE --input-len N --output-len M")  # fmt: skip
    requests, elapsed = num(doc, "num_requests", source, int), num(doc, "elapsed_time", source)
    total = num(doc, "total_num_tokens", source, int)
    if not (1 <= requests <= 10**6 and 0 < elapsed < 1e7):
        raise PeerError(f"{source}: {requests} requests in {elapsed:g} s is not a measurement")
    notes = [f"imported from {THROUGHPUT} --output-json ({os.path.basename(source)}); input {in_len} and output "
             f"{out_len} tokens given at import", f"{THROUGHPUT} fields: " + verbatim(doc)]  # fmt: skip
    expected = requests * (in_len + out_len)
    if abs(total - expected) > 0.1 * expected:  # random prompts re-tokenize to a few tokens more or less
        notes.append(f"{THROUGHPUT} counted {total} tokens, far from {requests} x ({in_len} + {out_len}): the lengths "
                     "given at import may not be the run's")  # fmt: skip
    peer = {"tool": THROUGHPUT, **{k: v for k, v in doc.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}}
    c = cell(0, requests, in_len, out_len, [elapsed], requests * out_len, peer=peer, at=mtime)
    r = run(digest, "throughput", tool=THROUGHPUT, version="unknown", fmt="json", source=source, engine="vllm",
            model=str(doc.get("model_id") or UNKNOWN), label=THROUGHPUT, device=UNKNOWN,
            created_at=mtime, cells=[c], notes=notes)  # fmt: skip
    return document(digest, f"{THROUGHPUT} {os.path.basename(source)}", mtime, [r])


def to_document(doc: dict, kind: str, source: str, digest: str, mtime: float, hints: dict[str, Any]) -> dict[str, Any]:
    return _serve(doc, source, digest, mtime) if kind == "serve" else _throughput(doc, source, digest, mtime, hints)
