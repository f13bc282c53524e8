"""`codebench-tui models`: the embedded model and every architecture preset, with parameter counts
and weight sizes per precision. No torch here: preset counts are cached in assets/presets/*.json
(computed on the meta device); --verify recomputes them in a subprocess that imports torch.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from pathlib import Path

COLUMNS = ("fp32", "bf16", "int8", "nf4")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the embedded model and the random-weight architecture presets")
    p.add_argument("--verify", action="store_true",
                   help="recompute the presets' parameter counts on the meta device (needs torch; a subprocess)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run)


def _tiny_counts() -> tuple[int, int]:
    """(params, linear params) of tiny from its safetensors header: shapes only, no weights read."""
    from engines.models.tiny import WEIGHTS, ensure_tiny

    path = Path(ensure_tiny()) / WEIGHTS
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = linear = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        size = 1
        for d in meta["shape"]:
            size *= d
        total += size
        if len(meta["shape"]) == 2 and not name.startswith(("model.embed_tokens", "lm_head")):
            linear += size
    return total, linear


def rows() -> list[dict]:
    from engines.models import presets
    from engines.models.tiny import load_tiny_config

    out = []
    total, linear = _tiny_counts()
    tiny = presets.Preset("tiny", "embedded tiny Llama (random weights)", "engines/models/tiny.py", total, total, linear,
                          load_tiny_config())  # fmt: skip
    for p in [tiny] + [presets.load(n) for n in presets.names()]:
        c = p.config
        layout = presets.kv_layout(c)
        gpt = c.get("model_type") == "gpt_bigcode"
        out.append({
            "model": p.name if p.name == "tiny" else p.ref,
            "architecture": c["architectures"][0],
            "model_type": c["model_type"],
            "params": p.params,
            "published_params": p.published_params,
            "layers": layout["layers"],
            "hidden": c["n_embd"] if gpt else c["hidden_size"],
            "heads": c["n_head"] if gpt else c["num_attention_heads"],
            "kv_heads": layout["kv_heads"],
            "vocab": c["vocab_size"],
            "context": c.get("n_positions") if gpt else c.get("max_position_embeddings"),
            "window": layout["window"],
            "weight_bytes": {"fp32": p.weight_bytes("fp32"), "bf16": p.weight_bytes("bf16"),
                             "int8": p.weight_bytes("fp16", "int8"), "nf4": p.weight_bytes("bf16", "nf4")},
        })  # fmt: skip
    return out


def verify() -> list[str]:
    """Mismatches between the cached preset counts and a fresh count on the meta device."""
    from engines.models import presets

    proc = subprocess.run([sys.executable, "-m", "engines.adapters.hf.build"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return [f"counting failed: {tail[0]} (needs torch and transformers: pip install \"codebench-tui[hf]\")"]
    bad = []
    for line in proc.stdout.splitlines():
        d = json.loads(line)
        p = presets.load(d["name"])
        if (p.params, p.linear_params) != (d["params"], d["linear_params"]):
            bad.append(f"{d['name']}: cached {p.params:,}/{p.linear_params:,}, "
                       f"meta device {d['params']:,}/{d['linear_params']:,}")  # fmt: skip
    return bad


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}" if n >= 2**30 / 10 else f"{n / 2**30:.2g}"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def run(args: argparse.Namespace) -> int:
    data = rows()
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print("models (presets: --model NAME:random); weights in GiB")
        print(f"{'model':<20} {'params':>7} {'layers':>6} {'ctx':>6} {'window':>6} " + " ".join(f"{c:>6}" for c in COLUMNS))
        for r in data:
            print(f"{r['model'].removesuffix(':random'):<20} {_params(r['params']):>7} {r['layers']:>6} {r['context']:>6} "
                  f"{r['window'] or '-':>6} " + " ".join(f"{_gib(r['weight_bytes'][c]):>6}" for c in COLUMNS))  # fmt: skip
        print("params counted on the meta device; int8: bitsandbytes LLM.int8 (fp16 elsewhere); nf4: 4-bit\n"
              "(bf16 elsewhere); KV cache not included; --json adds heads, KV heads, hidden size and vocabulary")  # fmt: skip
    if args.verify:
        bad = verify()
        for line in bad:
            print(f"mismatch: {line}", file=sys.stderr)
        if bad:
            return 1
        print("parameter counts verified on the meta device")
    return 0
