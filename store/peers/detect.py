"""Which tool wrote a file, and its runs as a checked codebench document."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from store.peers import aiperf, batched_bench, llama_bench, optimum_bench, vllm_bench
from store.peers.common import UNKNOWN, PeerError

FORMATS = ("llama-bench -o json|jsonl|csv|sql", "llama-batched-bench --output-format jsonl",
           "vllm bench serve --save-result", "vllm bench throughput --output-json",
           "aiperf profile (profile_export_aiperf.json)", "optimum-benchmark (benchmark.json)")  # fmt: skip


def read_peer(text: str, source: str, mtime: float, hints: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The file's runs as an export document (not yet checked), or None when no tool we read wrote it.
    PeerError: a file of a known tool that is damaged or lacks what a run needs."""
    hints = hints or {}
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    if fmt := llama_bench.sniff(text):
        out = llama_bench.to_document(text, fmt, source, digest, mtime)
    elif fmt := batched_bench.sniff(text):
        out = batched_bench.to_document(text, fmt, source, digest, mtime)
    elif text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if kind := vllm_bench.sniff(doc):
            out = vllm_bench.to_document(doc, kind, source, digest, mtime, hints)
        elif aiperf.sniff(doc):
            out = aiperf.to_document(doc, source, digest, mtime)
        elif optimum_bench.sniff(doc):
            out = optimum_bench.to_document(doc, source, digest, mtime)
        else:
            return None
    else:
        return None
    for run in out["runs"]:  # what the file did not say, from the user
        for key in ("model", "device"):
            if run[key] == UNKNOWN and hints.get(key):
                run[key] = str(hints[key])
    return out


__all__ = ["FORMATS", "PeerError", "read_peer"]
