"""llama.cpp's own benchmark tools run on a GGUF, as a crosscheck (and the import tests) run them: llama-bench and
llama-batched-bench built from the llama.cpp that the installed llama-cpp-python vendors (tools.py). Every setting
not given is the tool's own default."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from engines.adapters.llamacpp import tools

FORMATS = ("json", "jsonl", "csv", "sql")
RETRIES = 6


class PeerToolError(RuntimeError):
    pass


def _run(argv: list[str], out: Path, timeout: float) -> Path:
    # Read through a pipe: writing to a file straight away, llama-batched-bench (its log thread) lost its last line
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        raise PeerToolError(f"{Path(argv[0]).name} exited {proc.returncode}: {tail[0][:300]}")
    out.write_text(proc.stdout)
    return out


def llama_bench(gguf: Path, out: Path, *, n_prompt: str = "512", n_gen: str = "128", repetitions: int = 5,
                fmt: str = "json", threads: int | None = None, extra: list[str] | None = None,
                timeout: float = 1800) -> Path:  # fmt: skip
    """llama-bench -p N -n M -r R -o FMT; n_prompt/n_gen take its comma lists ("0" skips a kind)."""
    argv = [str(tools.tool("llama-bench")), "-m", str(gguf), "-p", n_prompt, "-n", n_gen, "-r", str(repetitions),
            "-o", fmt] + (["-t", str(threads)] if threads else []) + (extra or [])  # fmt: skip
    return _run(argv, out, timeout)


def batched_bench(gguf: Path, out: Path, *, pp: str, tg: str, pl: str, n_ctx: int | None = None,
                  extra: list[str] | None = None, timeout: float = 1800) -> Path:  # fmt: skip
    """llama-batched-bench -npp PP -ntg TG -npl PL --output-format jsonl; its context fits the largest cell."""
    need = max(int(x) for x in pp.split(",")) + max(int(x) for x in tg.split(","))
    ctx = n_ctx or need * max(int(x) for x in pl.split(","))
    wanted = {(int(a), int(b), int(c)) for a in pp.split(",") for b in tg.split(",") for c in pl.split(",")}
    lines: list[str] = []
    for _ in range(RETRIES):
        # its lines go through llama.cpp's log thread, which loses the last one at exit about 1 run in 4 (seen
        # with 0.3.36's llama.cpp): the cells missing are measured again, alone
        missing = sorted(wanted - {(r["pp"], r["tg"], r["pl"]) for r in map(json.loads, lines)})
        if not missing:
            break
        axes = [",".join(sorted({str(m[i]) for m in missing}, key=int)) for i in range(3)]
        argv = [str(tools.tool("llama-batched-bench")), "-m", str(gguf), "-c", str(ctx), "-npp", axes[0],
                "-ntg", axes[1], "-npl", axes[2], "--output-format", "jsonl"] + (extra or [])  # fmt: skip
        _run(argv, out, timeout)
        fresh = [x for x in out.read_text().splitlines() if x.strip().startswith("{")]
        lines += [x for x in fresh if (lambda r: (r["pp"], r["tg"], r["pl"]) in missing)(json.loads(x))]
    else:
        if set(wanted) - {(r["pp"], r["tg"], r["pl"]) for r in map(json.loads, lines)}:
            raise PeerToolError(f"llama-batched-bench left out cells in {RETRIES} tries")
    lines.sort(key=lambda x: (lambda r: (r["pp"], r["tg"], r["pl"]))(json.loads(x)))
    out.write_text("\n".join(lines) + "\n")
    return out
