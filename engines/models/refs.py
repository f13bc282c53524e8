"""Model references: the embedded `tiny`, an architecture preset with random weights (`NAME:random`),
a local directory, a `.gguf` file, an HF id or a server URL.

`check_model` runs in the parent (no heavy imports, nothing built); `materialize` runs in
the worker and returns what an adapter's `load` takes.
"""

from __future__ import annotations

import re
from pathlib import Path

from engines.base import SpecError

EMBEDDED = ("tiny",)
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def kind_of(model: str) -> str:
    """'embedded', 'preset', 'dir', 'gguf', 'url' or 'hf'; raises SpecError for anything else."""
    if model in EMBEDDED:
        return "embedded"
    if model.endswith(":random"):
        from engines.models.presets import parse_ref

        parse_ref(model)  # unknown preset names fail here, listing the known ones
        return "preset"
    if model.startswith(("http://", "https://")):
        return "url"
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "config.json").exists():
                raise SpecError(f"model directory {path} has no config.json; give an HF model directory or a .gguf file")
            return "dir"
        if path.suffix == ".gguf":
            return "gguf"
        raise SpecError(f"model file {path} is not a .gguf file; give a .gguf file or an HF model directory")
    looks_like_path = model.startswith((".", "/", "~")) or model.endswith(".gguf") or "\\" in model
    if looks_like_path:
        raise SpecError(f"model path {model} does not exist; check the path (or use --model tiny)")
    if _HF_ID.match(model):
        return "hf"
    raise SpecError(
        f"unknown model '{model}'; use tiny, NAME:random (`codebench-tui models`), a local model directory, "
        "a .gguf file or an HF id like org/name"
    )


def check_model(model: str) -> str:
    return kind_of(model)


def materialize(model: str) -> str:
    """Worker side: build the embedded model if needed and return a path, id or URL."""
    if model == "tiny":
        from engines.models.tiny import ensure_tiny

        return str(ensure_tiny())
    return str(Path(model).expanduser()) if kind_of(model) in ("dir", "gguf") else model


def tokenizer_file(model_path: str) -> Path | None:
    """tokenizer.json beside an HF model, or beside the HF model a GGUF was converted from.
    Random presets are fed by tiny's tokenizer (ids < 4096, inside every preset's vocabulary)."""
    if model_path.endswith(":random"):
        from engines.models.tiny import TINY_TOKENIZER

        return Path(str(TINY_TOKENIZER))  # the shipped file: no need to build tiny's weights
    p = Path(model_path)
    for candidate in (p / "tokenizer.json", p.parent / "tokenizer.json", p.parent.parent / "tokenizer.json"):
        if candidate.exists():
            return candidate
    return None
