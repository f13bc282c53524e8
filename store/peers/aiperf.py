"""AIPerf's profile export (profile_export_aiperf.json) as a codebench run: one serving cell.

The cell's concurrency and request count come from the profiling phase of its input_config (or the request
count), its lengths from the requested ISL/OSL (else the measured means), its rate from a request-rate phase
(else all at once). AIPerf's names differ from vLLM's and codebench's: its `inter_token_latency` is per request
(latency - TTFT) / (tokens - 1), codebench's TPOT; its `inter_chunk_latency` is every gap, codebench's ITL. Its
own figures are kept under metrics.peer; it stores no per-request timings here (profile_export.jsonl has them).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from store.peers.common import PeerError, cell, document, num, run, verbatim

TOOL = "aiperf"
_PAIRS = {"ttft_s": "time_to_first_token", "tpot_s": "inter_token_latency", "itl_s": "inter_chunk_latency",
          "e2e_s": "request_latency"}  # fmt: skip


def sniff(doc: Any) -> bool:
    return isinstance(doc, dict) and "aiperf_version" in doc and "benchmark_duration" in doc and "request_count" in doc


def _avg(doc: dict, key: str, source: str) -> float:
    entry = doc.get(key)
    if not isinstance(entry, dict):
        raise PeerError(f"{source}: AIPerf export without {key!r}; export it again with aiperf profile")
    return num(entry, "avg", f"{source}: {key}")


def _ms(doc: dict, key: str, source: str) -> dict[str, float | None]:
    entry = doc.get(key)
    if not isinstance(entry, dict) or entry.get("unit") != "ms":
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    return {name: num(entry, k, f"{source}: {key}") / 1000 if entry.get(k) is not None else None
            for name, k in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("mean", "avg"))}  # fmt: skip


def _phase(doc: dict) -> dict[str, Any]:
    phases = (doc.get("input_config") or {}).get("phases") if isinstance(doc.get("input_config"), dict) else None
    profiling = [p for p in phases or [] if isinstance(p, dict) and p.get("kind", p.get("name")) == "profiling"]
    return profiling[0] if profiling else {}


def _requested(doc: dict, which: str) -> float | None:
    config = doc.get("input_config") if isinstance(doc.get("input_config"), dict) else {}
    for ds in config.get("datasets") or []:
        mean = (((ds or {}).get("prompts") or {}).get(which) or {}).get("mean") if isinstance(ds, dict) else None
        if isinstance(mean, (int, float)) and not isinstance(mean, bool) and mean >= 1:
            return float(mean)
    return None


def to_document(doc: dict, source: str, digest: str, mtime: float) -> dict[str, Any]:
    duration = _avg(doc, "benchmark_duration", source)
    requests = round(_avg(doc, "request_count", source))
    failed = round(_avg(doc, "error_request_count", source)) if isinstance(doc.get("error_request_count"), dict) else 0
    phase = _phase(doc)
    concurrency = phase.get("concurrency") or requests
    rate = phase.get("rate") or phase.get("request_rate")
    in_len = _requested(doc, "isl") or _avg(doc, "input_sequence_length", source)
    out_len = _requested(doc, "osl") or _avg(doc, "output_sequence_length", source)
    if isinstance(doc.get("output_token_throughput"), dict):  # the tool's own rate, over its own window
        tokens = _avg(doc, "output_token_throughput", source) * duration
    else:
        tokens = _avg(doc, "total_osl", source) if isinstance(doc.get("total_osl"), dict) else out_len * (requests - failed)
    if not (0 < duration < 1e7 and 1 <= requests <= 10**7 and isinstance(concurrency, int) and 1 <= concurrency <= 10**6):
        raise PeerError(f"{source}: {requests} requests at concurrency {concurrency!r} in {duration:g} s is not a measurement")
    rate_value: Any = "inf" if rate is None else num({"rate": rate}, "rate", source)
    figures = {"passes": 1, "requests": requests, "failed": failed, "concurrency": concurrency,
               "request_rate": rate_value, "wall_s": duration, "request_throughput": (requests - failed) / duration,
               "output_tokens_per_s": tokens / duration, **{k: _ms(doc, v, source) for k, v in _PAIRS.items()}}  # fmt: skip
    peer = {"tool": TOOL, **{k: v["avg"] for k, v in doc.items() if isinstance(v, dict) and isinstance(v.get("avg"), (int, float))}}
    try:
        at = datetime.fromisoformat(str(doc.get("start_time"))).timestamp()
    except ValueError:
        at = mtime
    c = cell(0, concurrency, max(1, round(in_len)), max(1, round(out_len)), [duration], round(tokens),
             params={"request_rate": rate_value}, peer=peer, at=at)  # fmt: skip
    c["ttft_s"] = None
    c["metrics"]["serving"] = figures
    models = ((doc.get("input_config") or {}).get("models") or {}).get("items") if isinstance(doc.get("input_config"), dict) else None
    model = str((models or [{}])[0].get("name") or "unknown") if isinstance(models, list) and models and isinstance(models[0], dict) else "unknown"
    notes = [f"imported from AIPerf's profile export ({os.path.basename(source)}); its inter_token_latency is "
             "codebench's TPOT, its inter_chunk_latency codebench's ITL",
             "AIPerf fields: " + verbatim({k: v for k, v in doc.items() if not isinstance(v, dict)})]  # fmt: skip
    r = run(digest, "aiperf", tool=TOOL, version=str(doc.get("aiperf_version"))[:100], fmt="json", source=source,
            engine="openai", model=model, label=TOOL, device="server", created_at=at, cells=[c], notes=notes,
            spec={"load": {"request_rate": None if rate is None else [rate_value], "requests": requests}})  # fmt: skip
    return document(digest, f"{TOOL} {os.path.basename(source)}", at, [r])
