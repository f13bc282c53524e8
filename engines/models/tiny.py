"""The embedded default model `tiny`: a small Llama with deterministic random weights.

Shipped as data (assets/tiny: config.json and a tokenizer trained by make_tokenizer.py); the
weights are drawn from a fixed seed with numpy and written on first use into
<cache>/models/tiny-v2/, an ordinary Hugging Face model directory. Every call checks the files
against known hashes and rebuilds a damaged directory. No torch here: the CLI and the dashboard
call this too.

Weights (float32, HF Llama key names) are drawn from np.random.default_rng(TINY_SEED) with
standard_normal(dtype=float32) in this order, shapes as HF stores them ([out, in] for linears):
    model.embed_tokens.weight                                  std 0.02
    for each layer i: q_proj, k_proj, v_proj, o_proj,
                      mlp.gate_proj, mlp.up_proj, mlp.down_proj std 0.02
    lm_head.weight                                             std LM_HEAD_STD
RMSNorm weights (input_layernorm, post_attention_layernorm, model.norm) are ones and draw nothing.
LM_HEAD_STD = 2 / sqrt(hidden_size): after the final RMSNorm the logits have a std of about 2, so
greedy picks are decisive and engines with different kernels agree on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from engines.base import SpecError

if TYPE_CHECKING:
    import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename still keeps readers from torn files
    fcntl = None  # type: ignore[assignment]

TINY_VERSION = "tiny-v2"  # bump when the config, the tokenizer or the weight recipe changes (v2: FIM tokens)
TINY_SEED = 20240917
EMBED_STD = 0.02
# sha256 of the model.safetensors every build must produce (numpy PCG64 + safetensors layout).
TINY_WEIGHTS_SHA256 = "d9d679d6e4800d39d55ec9819b0ed7537886bca738beeeefe2dae2790e141be1"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"

TINY_ASSETS = files("assets.tiny")
TINY_CONFIG = TINY_ASSETS / "config.json"
TINY_TOKENIZER = TINY_ASSETS / "tokenizer.json"
EOS, PAD = "<|endoftext|>", "<|pad|>"


class TinyBuildError(RuntimeError):
    """The build produced different bytes than the pinned ones: a bug, not a user error."""


def cache_dir() -> Path:
    env = os.environ.get("CODEBENCH_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("codebench-tui"))


def tiny_dir(cache_root: Path | None = None) -> Path:
    return Path(cache_root or cache_dir()) / "models" / TINY_VERSION


def tokenizer_path(model_dir: Path) -> Path:
    return Path(model_dir) / "tokenizer.json"


def load_tiny_config() -> dict:
    return json.loads(TINY_CONFIG.read_text())


def weight_specs(cfg: dict) -> list[tuple[str, tuple[int, ...], float | None]]:
    """(name, shape, std) in draw order; std None means ones (RMSNorm)."""
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    specs: list[tuple[str, tuple[int, ...], float | None]] = [("model.embed_tokens.weight", (vocab, h), EMBED_STD)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (h,), None),
            (p + "self_attn.q_proj.weight", (q, h), EMBED_STD),
            (p + "self_attn.k_proj.weight", (kv, h), EMBED_STD),
            (p + "self_attn.v_proj.weight", (kv, h), EMBED_STD),
            (p + "self_attn.o_proj.weight", (h, q), EMBED_STD),
            (p + "post_attention_layernorm.weight", (h,), None),
            (p + "mlp.gate_proj.weight", (inter, h), EMBED_STD),
            (p + "mlp.up_proj.weight", (inter, h), EMBED_STD),
            (p + "mlp.down_proj.weight", (h, inter), EMBED_STD),
        ]
    specs += [("model.norm.weight", (h,), None), ("lm_head.weight", (vocab, h), 2.0 / h**0.5)]
    return specs


def make_weights(cfg: dict, seed: int = TINY_SEED) -> dict[str, np.ndarray]:
    import numpy as np  # here, not at the top: cache_dir() stays numpy-free (llamacpp_vs_llama_bench.py --process)

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape, std in weight_specs(cfg):
        if std is None:
            out[name] = np.ones(shape, dtype=np.float32)
        else:
            out[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return out


def param_count(cfg: dict | None = None) -> int:
    return sum(math.prod(shape) for _, shape, _ in weight_specs(cfg or load_tiny_config()))


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


@lru_cache(maxsize=1)
def _small_files() -> dict[str, bytes]:
    """Every file but the weights and the manifest, as the bytes they must have."""
    cfg = load_tiny_config()
    specials = {"bos_token": EOS, "eos_token": EOS, "pad_token": PAD}
    return {
        "config.json": TINY_CONFIG.read_bytes(),
        "tokenizer.json": TINY_TOKENIZER.read_bytes(),
        "generation_config.json": _json(
            {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
             "pad_token_id": cfg["pad_token_id"], "do_sample": False}
        ),
        "tokenizer_config.json": _json(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **specials,
                "model_max_length": cfg["max_position_embeddings"],
                "padding_side": "left",  # decoder-only batches pad on the left
                "clean_up_tokenization_spaces": False,  # or decode -> encode would not round-trip
                "add_bos_token": False,  # prompts are exact token lists; text-in engines must see the same
                "add_eos_token": False,
            }
        ),
        "special_tokens_map.json": _json(specials),
    }


def expected_hashes() -> dict[str, str]:
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in _small_files().items()}
    hashes[WEIGHTS] = TINY_WEIGHTS_SHA256
    return dict(sorted(hashes.items()))


def _manifest_bytes() -> bytes:
    return _json({"model": TINY_VERSION, "seed": TINY_SEED, "sha256": expected_hashes()})


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problems(model_dir: Path) -> list[str]:
    """What is missing or damaged in a tiny model directory ([] if it is intact)."""
    found: list[str] = []
    wanted = {**expected_hashes(), MANIFEST: hashlib.sha256(_manifest_bytes()).hexdigest()}
    for name, sha in wanted.items():
        path = Path(model_dir) / name
        try:
            if _sha256_file(path) != sha:
                found.append(f"{name} damaged")
        except FileNotFoundError:
            found.append(f"{name} missing")
        except OSError as exc:
            found.append(f"{name} unreadable ({exc.strerror})")
    return found


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, even if we crash
        yield


def _build_into(tmp: Path) -> None:
    from safetensors.numpy import save

    data = save(make_weights(load_tiny_config()), metadata={"format": "pt"})
    got = hashlib.sha256(data).hexdigest()
    if got != TINY_WEIGHTS_SHA256:
        raise TinyBuildError(
            f"tiny weights built with sha256 {got}, pinned {TINY_WEIGHTS_SHA256}: the build is not deterministic "
            "here (numpy or safetensors changed how it draws or lays out bytes) or assets/tiny/config.json changed "
            "without updating TINY_WEIGHTS_SHA256 and TINY_VERSION in engines/models/tiny.py"
        )
    (tmp / WEIGHTS).write_bytes(data)
    for name, blob in _small_files().items():
        (tmp / name).write_bytes(blob)
    (tmp / MANIFEST).write_bytes(_manifest_bytes())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def ensure_tiny(cache_root: Path | None = None) -> Path:
    """The tiny model's directory, built (or rebuilt if damaged) on first use; safe across processes."""
    target = tiny_dir(cache_root)
    if not problems(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target.parent / f".{TINY_VERSION}.lock"):
            if not problems(target):  # another process built it while we waited
                return target
            for stale in target.parent.glob(f".{TINY_VERSION}.*-*"):  # left by a builder that died
                _remove(stale)
            tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_VERSION}.build-", dir=target.parent))
            tmp.chmod(0o755)  # mkdtemp makes it private; the model directory is ordinary data
            try:
                _build_into(tmp)
                if os.path.lexists(target):
                    old = Path(tempfile.mkdtemp(prefix=f".{TINY_VERSION}.old-", dir=target.parent))
                    os.replace(target, old / "x")
                    os.replace(tmp, target)
                    _remove(old)
                else:
                    os.replace(tmp, target)
            finally:
                if tmp.exists():
                    _remove(tmp)
    except OSError as exc:
        raise SpecError(
            f"cannot build the tiny model in {target.parent} ({exc.strerror or exc}); "
            "set CODEBENCH_CACHE to a writable directory"
        ) from None
    left = problems(target)
    if left:
        raise TinyBuildError(f"tiny model in {target} is still bad after a rebuild: {', '.join(left)}")
    return target


# --- tiny-draft: a smaller model with tiny's tokenizer, the draft for speculative decoding ---------

TINY_DRAFT_VERSION = "tiny-draft-v2"  # bump with any change to the recipe below or to tiny's tokenizer
TINY_DRAFT_SEED = 20240918
# One layer, hidden 128: about half of tiny's per-token cost (the 4096-token embedding and head dominate).
TINY_DRAFT_SHAPE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 1, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 32}  # fmt: skip
TINY_DRAFT_WEIGHTS_SHA256 = "b2de0f1af8726a47d41987701a3c28bb4f4142829853bdf32763f6d67a5b070a"


def tiny_draft_config() -> dict:
    return {**load_tiny_config(), **TINY_DRAFT_SHAPE}


@lru_cache(maxsize=1)
def _draft_files() -> dict[str, bytes]:
    """tiny's tokenizer and special-token files with the draft's config."""
    files_ = dict(_small_files())
    files_["config.json"] = _json(tiny_draft_config())
    return files_


def _draft_manifest() -> bytes:
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in _draft_files().items()}
    hashes[WEIGHTS] = TINY_DRAFT_WEIGHTS_SHA256
    return _json({"model": TINY_DRAFT_VERSION, "seed": TINY_DRAFT_SEED, "sha256": dict(sorted(hashes.items()))})


def draft_problems(model_dir: Path) -> list[str]:
    wanted = {name: hashlib.sha256(data).hexdigest() for name, data in _draft_files().items()}
    wanted[WEIGHTS] = TINY_DRAFT_WEIGHTS_SHA256
    wanted[MANIFEST] = hashlib.sha256(_draft_manifest()).hexdigest()
    found = []
    for name, sha in wanted.items():
        try:
            if _sha256_file(Path(model_dir) / name) != sha:
                found.append(f"{name} damaged")
        except OSError:
            found.append(f"{name} missing")
    return found


def ensure_tiny_draft(cache_root: Path | None = None) -> Path:
    """The tiny-draft model directory (deterministic weights, pinned hash), built on first use."""
    from safetensors.numpy import save

    target = Path(cache_root or cache_dir()) / "models" / TINY_DRAFT_VERSION
    if not draft_problems(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target.parent / f".{TINY_DRAFT_VERSION}.lock"):
            if not draft_problems(target):
                return target
            data = save(make_weights(tiny_draft_config(), TINY_DRAFT_SEED), metadata={"format": "pt"})
            got = hashlib.sha256(data).hexdigest()
            if got != TINY_DRAFT_WEIGHTS_SHA256:
                raise TinyBuildError(f"tiny-draft weights built with sha256 {got}, pinned {TINY_DRAFT_WEIGHTS_SHA256}; "
                                     "update TINY_DRAFT_WEIGHTS_SHA256 and TINY_DRAFT_VERSION together")  # fmt: skip
            tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_DRAFT_VERSION}.build-", dir=target.parent))
            tmp.chmod(0o755)
            try:
                (tmp / WEIGHTS).write_bytes(data)
                for name, blob in _draft_files().items():
                    (tmp / name).write_bytes(blob)
                (tmp / MANIFEST).write_bytes(_draft_manifest())
                if os.path.lexists(target):
                    _remove(target)
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    _remove(tmp)
    except OSError as exc:
        raise SpecError(f"cannot build tiny-draft in {target.parent} ({exc.strerror or exc}); "
                        "set CODEBENCH_CACHE to a writable directory") from None  # fmt: skip
    left = draft_problems(target)
    if left:
        raise TinyBuildError(f"tiny-draft in {target} is still bad after a rebuild: {', '.join(left)}")
    return target
