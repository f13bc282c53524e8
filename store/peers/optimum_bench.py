"""optimum-benchmark's benchmark.json (an inference scenario on the pytorch backend) as a codebench run: one
cell of its batch_size x sequence_length x max_new_tokens.

Each of its `generate` latencies is a repeat (with the `prefill` latency of the same iteration as its TTFT), so
codebench's intervals come from them; its decode throughput is the cell's decode tokens/s and its peak RAM the
cell's RSS. Its own figures stay under metrics.peer.
"""

from __future__ import annotations

import os
from typing import Any

from store.metrics import summarise
from store.peers.common import PeerError, cell, document, num, run, verbatim

TOOL = "optimum-benchmark"


def sniff(doc: Any) -> bool:
    return isinstance(doc, dict) and set(doc) == {"config", "report"} and isinstance(doc["config"], dict) and \
        "scenario" in doc["config"] and "backend" in doc["config"]  # fmt: skip


def _values(report: dict, target: str, source: str) -> list[float]:
    latency = ((report.get(target) or {}).get("latency") or {}) if isinstance(report.get(target), dict) else {}
    values = latency.get("values") if isinstance(latency, dict) else None
    if not isinstance(values, list) or not values or len(values) > 1_000_000:
        raise PeerError(f"{source}: optimum-benchmark report without {target} latencies; run it with latency=True")
    out = [num(values, i, f"{source}: report.{target}") for i in range(len(values))]
    if not all(0 < v < 1e7 for v in out):
        raise PeerError(f"{source}: a {target} latency of {min(out):g} s is not a measurement")
    return out


def to_document(doc: dict, source: str, digest: str, mtime: float) -> dict[str, Any]:
    config, report = doc["config"], doc["report"]
    backend, scenario = config.get("backend") or {}, config.get("scenario") or {}
    if backend.get("name") != "pytorch" or scenario.get("name") != "inference":
        raise PeerError(f"{source}: optimum-benchmark {str(scenario.get('name'))[:40]!r} on {str(backend.get('name'))[:40]!r}: "
                        "only the inference scenario on the pytorch backend maps onto codebench's cells")  # fmt: skip
    shapes, gen = scenario.get("input_shapes") or {}, scenario.get("generate_kwargs") or {}
    where = f"{source}: config.scenario"
    batch, in_len = num(shapes, "batch_size", where, int), num(shapes, "sequence_length", where, int)
    out_len = num(gen, "max_new_tokens", where, int)
    if not (1 <= batch <= 10**6 and 1 <= in_len <= 10**9 and 1 <= out_len <= 10**9):
        raise PeerError(f"{where}: batch {batch}, sequence {in_len}, new tokens {out_len} is not a cell")
    generate, prefill = _values(report, "generate", source), _values(report, "prefill", source)
    repeats = [{"latencies_s": [t], "ttft_s": [prefill[i] if i < len(prefill) else None], "tokens": [batch * out_len]}
               for i, t in enumerate(generate)]  # fmt: skip
    decode = ((report.get("decode") or {}).get("throughput") or {}) if isinstance(report.get("decode"), dict) else {}
    peer = {"tool": TOOL}
    for target, figures in report.items():
        if isinstance(figures, dict):
            for kind in ("latency", "throughput"):
                entry = figures.get(kind)
                if isinstance(entry, dict):
                    value = entry.get("mean", entry.get("value"))
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        peer[f"{target}_{kind}"] = value
    rams = [(f.get("memory") or {}).get("max_ram") for f in report.values() if isinstance(f, dict) and isinstance(f.get("memory"), dict)]
    env = config.get("environment") or {}
    c = cell(0, batch, in_len, out_len, generate, batch * out_len, peer=peer, at=mtime)
    c["repeats"] = repeats
    c.update(summarise(repeats, batch, out_len))
    if isinstance(decode.get("value"), (int, float)) and decode.get("unit") == "tokens/s":
        c["decode_tps"] = float(decode["value"])
    ram = max([r for r in rams if isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1e9], default=None)
    c["peak_rss_bytes"] = int(ram * 1e6) if ram else None  # its MB are 10^6 bytes
    device = str(backend.get("device") or "cpu")
    notes = [f"imported from {TOOL}'s benchmark.json ({os.path.basename(source)})",
             f"{TOOL} config: " + verbatim({k: v for k, v in backend.items() if v not in (None, {}, False)})]  # fmt: skip
    host = {"cpu": str(env.get("cpu") or "?").strip()[:1000], "cpu_logical": env.get("cpu_count"), "python": env.get("python_version")}
    if not (isinstance(host["cpu_logical"], int) and 0 <= host["cpu_logical"] < 2**24):
        host.pop("cpu_logical")
    r = run(digest, "optimum", tool=TOOL, version=str(env.get("optimum_benchmark_version") or "unknown")[:100], fmt="json",
            source=source, engine="hf-generate", model=str(backend.get("model") or "unknown"), label=TOOL,
            device=device if device == "cpu" else f"{device}:{(backend.get('device_ids') or '0')}".split(",")[0],
            created_at=mtime, cells=[c], notes=notes, host=host,
            config={"precision": str(backend.get("torch_dtype"))[:40] if backend.get("torch_dtype") else None,
                    "attention": backend.get("attn_implementation")})  # fmt: skip
    return document(digest, f"{TOOL} {os.path.basename(source)}", mtime, [r])
