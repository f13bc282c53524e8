"""llama.cpp's llama-batched-bench output (--output-format jsonl) as a codebench run: one cell per line.

A line is one measurement of `pl` sequences, each a prompt of `pp` tokens then `tg` generated ones: a cell of
batch pl, input pp, output tg. Its latency is t, its TTFT t_pp (the prompts' time), its decode tokens/s
speed_tg (pl x tg / t_tg: every generated token is a decode step here). The tool measures each once: one
repeat per cell, no interval. is_pp_shared (one prompt for all sequences) is the cell's `pp_shared` parameter.
"""

from __future__ import annotations

import json
import os
from typing import Any

from store.peers.common import UNKNOWN, PeerError, cell, document, json_lines, num, run, verbatim

TOOL = "llama-batched-bench"
CELL_FIELDS = ("pp", "tg", "pl", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed")
OPTIONS = ("n_batch", "n_ubatch", "n_gpu_layers", "n_threads", "n_threads_batch")
_FLASH = {-1: "auto", 0: "off", 1: "on"}


def sniff(text: str) -> str | None:
    first = text.lstrip().split("\n", 1)[0]
    return "jsonl" if first.startswith("{") and '"speed_tg"' in first and '"pl"' in first else None


def to_document(text: str, fmt: str, source: str, digest: str, mtime: float) -> dict[str, Any]:
    recs = json_lines(text, source, TOOL)
    if not recs or len(recs) > 100_000:
        raise PeerError(f"{source}: {len(recs)} measurements; {TOOL} output holds 1 to 100000 lines")
    groups: dict[str, list[tuple[int, dict]]] = {}
    for n, rec in recs:
        key = json.dumps({k: rec.get(k) for k in sorted(rec) if k not in CELL_FIELDS}, sort_keys=True, default=str)
        groups.setdefault(key, []).append((n, rec))
    name = os.path.basename(source)
    runs = []
    for key, lines in groups.items():
        first = lines[0][1]
        cells = []
        for i, (n, rec) in enumerate(lines):
            where = f"{source}: line {n}"
            pp, tg, pl = (num(rec, k, where, int) for k in ("pp", "tg", "pl"))
            t, t_pp = num(rec, "t", where), num(rec, "t_pp", where)
            if not (pp >= 1 and tg >= 1 and pl >= 1 and 0 < t_pp <= t < 1e7):
                raise PeerError(f"{where}: pp {pp}, tg {tg}, pl {pl}, t {t:g} s, t_pp {t_pp:g} s is not a measurement")
            shared = rec.get("is_pp_shared") in (1, True, "1")
            peer = {"tool": TOOL, **{k: num(rec, k, where) for k in CELL_FIELDS if k in rec}}
            cells.append(cell(i, pl, pp, tg, [t], pl * tg, t_pp, params={"pp_shared": 1} if shared else {}, peer=peer,
                              at=mtime, decode_tps=num(rec, "speed_tg", where)))  # fmt: skip
        options = {k: num(first, k, source, int) for k in OPTIONS if k in first}
        if "flash_attn" in first:
            options["flash_attn"] = _FLASH.get(num(first, "flash_attn", source, int), "auto")
        if "n_kv_max" in first:
            options["n_ctx"] = num(first, "n_kv_max", source, int)
        notes = [f"imported from {TOOL} --output-format jsonl ({name}); the model and build are not in its output",
                 f"{TOOL} fields: " + verbatim({k: v for k, v in first.items() if k not in CELL_FIELDS}),
                 f"{TOOL} measures each cell once: no interval"]  # fmt: skip
        layers = first.get("n_gpu_layers")
        runs.append(run(digest, key, tool=TOOL, version="unknown", fmt="jsonl", source=source, engine="llama.cpp",
                        model=UNKNOWN, label=TOOL, device="cpu" if layers in (0, "0") else UNKNOWN, created_at=mtime,
                        cells=cells, config={"options": options}, notes=notes))  # fmt: skip
    return document(digest, f"{TOOL} {name}", mtime, runs)
