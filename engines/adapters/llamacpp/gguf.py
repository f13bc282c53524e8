"""Hugging Face Llama-family checkpoint -> GGUF (F32/F16 written here, K/legacy quants by llama.cpp).

Writing needs numpy and gguf and quantizing needs llama_cpp's bindings, so conversion runs in workers only, and
in a process of its own where the worker keeps numpy out (convert_isolated). Reading a GGUF's header needs
neither (inspect_gguf). Files are cached as `<model_dir>/gguf/<hash>-<quant>.gguf` (or under the user cache when the
model directory is read-only), keyed by a content hash of the source files and the converter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import mmap
import os
import struct
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator

from engines.base import SpecError

if TYPE_CHECKING:
    import numpy as np

CONVERTER_VERSION = "1"  # bump when the output of write_gguf changes
QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m")
_WRITTEN = {"f32": 0, "f16": 1}  # llama_ftype written directly by this module
ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")
_SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# tokenizer.json pre-tokenizer -> llama.cpp's name for the same split (llama-vocab.cpp).
_LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)

log = logging.getLogger(__name__)


# --- quant names -----------------------------------------------------------------------------


def check_quant(quant: str | None) -> str:
    q = (quant or "f32").lower()
    if q not in QUANTS:
        raise SpecError(f"unknown GGUF quant '{quant}' (known: {', '.join(QUANTS)}); pick one with --quant")
    return q


# --- validating a user's .gguf ---------------------------------------------------------------


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Validate a GGUF file (magic, version, header, tensor data within the file) and summarise it.

    A truncated or foreign file raises SpecError here instead of failing deep inside llama.cpp.
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"GGUF file {p} does not exist; pass an existing .gguf file to --model")
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise SpecError(f"{p} is not a GGUF file (bad magic {head[:4]!r}); pass a .gguf file or an HF model directory")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise SpecError(f"{p} is GGUF version {version}, which llama.cpp cannot read (need 2 or 3); re-convert it")
    try:
        with p.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            fields, tensors, data_offset = _read_header(buf)
        tables = constants()
        end = data_offset
        for offset, ggml_type, n_elements in tensors:
            block, type_bytes = tables.GGML_QUANT_SIZES[tables.GGMLQuantizationType(ggml_type)]
            end = max(end, data_offset + offset + n_elements // block * type_bytes)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged header
        why = f"{type(exc).__name__}: {exc}"
        raise SpecError(f"{p} is truncated or corrupt ({why}); re-download or re-convert it") from None
    if end > size:
        raise SpecError(f"{p} is truncated ({size} of {end} bytes); re-download or re-convert it")
    if not tensors:
        raise SpecError(f"{p} holds no tensors; pass a model GGUF file")
    return {
        "architecture": fields.get("general.architecture"),
        "file_type": fields.get("general.file_type"),
        "n_tensors": len(tensors),
        "version": int(version),
        "bytes": size,
    }


@lru_cache(maxsize=1)
def constants() -> ModuleType:
    """The gguf package's tables (ggml types, their block sizes, llama file types) without gguf's __init__,
    which imports numpy: gguf/constants.py itself imports only the standard library."""
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'gguf'", name="gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / "constants.py"
    loader = importlib.util.spec_from_file_location("_codebench_gguf_constants", path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


# GGUF value types: 8 is a string, 9 an array; the rest are little-endian scalars.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read_header(buf: Any) -> tuple[dict[str, Any], list[tuple[int, int, int]], int]:
    """(scalar and string metadata, (offset, ggml type, elements) per tensor, where tensor data starts) of a GGUF v2/v3
    header. Every length is checked against the file, so a hostile header fails here, not in an allocation."""
    size, pos = len(buf), 8

    def take(fmt: str) -> Any:
        nonlocal pos
        value = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        if n > size - pos:
            raise ValueError(f"a string of {n} bytes at offset {pos}")
        pos += n
        return bytes(buf[pos - n : pos]).decode("utf-8", errors="replace")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind == 8:
            return string()
        if kind != 9:
            raise ValueError(f"unknown value type {kind}")
        item, count = take("<I"), take("<Q")
        least = struct.calcsize(_SCALARS[item]) if item in _SCALARS else 8 if item == 8 else 12  # bytes an item takes
        if count * least > size - pos:
            raise ValueError(f"an array of {count} items at offset {pos}")
        if item in _SCALARS:
            pos += count * struct.calcsize(_SCALARS[item])
        else:
            for _ in range(count):
                value(item)
        return None  # arrays (the vocabulary) are skipped

    n_tensors, n_fields = take("<Q"), take("<Q")
    if n_tensors > size or n_fields > size:
        raise ValueError(f"{n_tensors} tensors and {n_fields} fields in {size} bytes")
    fields = {}
    for _ in range(n_fields):
        key = string()
        fields[key] = value(take("<I"))
    tensors = []
    for _ in range(n_tensors):
        string()
        n_dims = take("<I")
        if n_dims > 8:
            raise ValueError(f"a tensor of {n_dims} dimensions")
        n_elements = 1
        for _ in range(n_dims):
            n_elements *= take("<Q")
        ggml_type = take("<I")
        tensors.append((take("<Q"), ggml_type, n_elements))
    alignment = fields.get("general.alignment") or 32
    if pos > size:
        raise ValueError("the header runs past the end of the file")
    return fields, tensors, -(-pos // alignment) * alignment


# --- reading safetensors without torch (numpy cannot load bf16, so parse the header) --------

_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "uint16", "F64": "float64"}  # numpy dtype names


def _safetensor_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SpecError(f"{model_dir} has no *.safetensors weights; save the model with save_pretrained()")
    return files


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """Yield (name, shape, load -> float32 array) lazily, memory-mapping each file."""
    for path in files:
        with path.open("rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = meta["dtype"]
            if dtype not in _ST_DTYPES:
                raise SpecError(f"{path.name}: tensor {name} has dtype {dtype}, which the GGUF converter cannot read")
            shape = tuple(meta["shape"])
            start, stop = meta["data_offsets"]

            def load(path=path, start=start, stop=stop, dtype=dtype, shape=shape) -> np.ndarray:
                import numpy as np

                raw = np.memmap(path, dtype=np.uint8, mode="r", offset=base + start, shape=(stop - start,))
                arr = raw.view(_ST_DTYPES[dtype]).reshape(shape)
                if dtype == "BF16":  # bf16 is the top half of a float32
                    return (arr.astype(np.uint32) << 16).view(np.float32)
                return arr.astype(np.float32)

            yield name, shape, load


# --- the conversion --------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path} is missing; an HF model directory needs config.json and tokenizer.json") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path} is not valid JSON ({exc}); fix or re-save the model") from None


def load_config(model_dir: Path) -> dict[str, Any]:
    cfg = _read_json(model_dir / "config.json")
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    if archs[0] not in ARCHITECTURES:
        raise SpecError(
            f"the GGUF converter supports Llama-family models ({', '.join(ARCHITECTURES)}), not {archs[0]}; "
            "convert it with llama.cpp's convert_hf_to_gguf.py and pass the .gguf file to --model"
        )
    if cfg.get("sliding_window") and cfg["sliding_window"] < cfg.get("max_position_embeddings", 0):
        raise SpecError("sliding-window attention is not supported by the GGUF converter; pass a converted .gguf file")
    return cfg


def _rope(cfg: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 moved rope_theta/rope_scaling into rope_parameters; older configs have them flat.
    params = dict(cfg.get("rope_scaling") or {})
    params.update(cfg.get("rope_parameters") or {})
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _pre_tokenizer_name(tok: dict[str, Any]) -> str:
    pre = tok.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "starcoder"
    if kinds == ["Split", "ByteLevel"] and parts[0].get("pattern", {}).get("Regex") == _LLAMA3_REGEX:
        return "llama-bpe"
    # Token ids are what codebench feeds llama.cpp, so a near-miss split only affects text prompts.
    log.warning("unrecognised pre-tokenizer %s; writing 'default' (text tokenization may differ)", kinds)
    return "default"


def _vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    tok = _read_json(model_dir / "tokenizer.json")
    model = tok.get("model", {})
    bytelevel = "ByteLevel" in json.dumps(tok.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not bytelevel:
        raise SpecError(
            "the GGUF converter handles byte-level BPE tokenizers only; convert this model with llama.cpp's "
            "convert_hf_to_gguf.py and pass the .gguf file to --model"
        )
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    for i, a in added.items():
        by_id[i] = a["content"]
    if by_id and max(by_id) >= vocab_size:
        raise SpecError(f"tokenizer has id {max(by_id)} but config vocab_size is {vocab_size}; fix config.json")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # padded embedding rows
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
        else:
            tokens.append(by_id[i])
            types.append((3 if added[i].get("special") else 4) if i in added else 1)  # CONTROL / USER_DEFINED / NORMAL
    return tokens, types, _pre_tokenizer_name(tok)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores q/k rows as [all first halves | all second halves] per head (rotate_half RoPE);
    # llama.cpp's RoPE pairs adjacent rows, so interleave them (convert_hf_to_gguf LlamaModel.permute).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    import math

    import numpy as np

    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    lo, hi = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def write_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "f32") -> None:
    """Write an F32 or F16 GGUF of an HF Llama checkpoint, one tensor in memory at a time."""
    import gguf
    import numpy as np

    model_dir, out_path = Path(model_dir), Path(out_path)
    quant = check_quant(quant)
    if quant not in _WRITTEN:
        raise ValueError(f"write_gguf writes f32/f16 only, not {quant}")
    cfg = load_config(model_dir)
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    n_layer = cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    vocab_size = cfg["vocab_size"]
    rope = _rope(cfg)

    w = gguf.GGUFWriter(None, "llama")
    w.add_name(model_dir.name)
    w.add_file_type(_WRITTEN[quant])
    w.add_vocab_size(vocab_size)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_rope_dimension_count(head_dim)
    if head_dim * n_head != cfg["hidden_size"]:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    kind = rope["rope_type"]
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif kind not in ("default", "llama3"):
        raise SpecError(f"RoPE scaling '{kind}' is not supported by the GGUF converter; pass a converted .gguf file")

    tokens, types, pre = _vocab(model_dir, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise SpecError(f"{model_dir / 'tokenizer.json'} has no BPE merges; re-save the tokenizer")
    special.add_to_gguf(w, quiet=True)
    if "bos" not in special.add_special_token:
        w.add_add_bos_token(False)  # the HF tokenizer adds no BOS either

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    plan: list[tuple[str, Callable[[], np.ndarray]]] = []
    for hf_name, shape, load in _iter_tensors(_safetensor_files(model_dir)):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SpecError(f"tensor {hf_name} has no llama.cpp equivalent; the converter takes plain Llama checkpoints")
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            load = (lambda f: lambda: _permute(f(), n_head))(load)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            load = (lambda f: lambda: _permute(f(), n_kv))(load)
        dtype = np.float16 if quant == "f16" and len(shape) > 1 else np.float32  # norms stay F32
        plan.append((name, (lambda f, d: lambda: f().astype(d, copy=False))(load, dtype)))
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    if kind == "llama3":
        factors = _llama3_rope_factors(rope, head_dim)
        plan.append(("rope_freqs.weight", lambda: factors))
        w.add_tensor_info("rope_freqs.weight", factors.shape, factors.dtype, factors.nbytes)

    w.write_header_to_file(out_path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, load in plan:
        w.write_tensor_data(np.ascontiguousarray(load()))
    w.close()


# --- cache ------------------------------------------------------------------------------------


def source_hash(model_dir: str | Path) -> str:
    """Content hash of the files a conversion reads, plus the converter version."""
    model_dir = Path(model_dir)
    h = hashlib.sha256(f"codebench-gguf-{CONVERTER_VERSION}".encode())
    files = [model_dir / n for n in _SOURCE_FILES if (model_dir / n).is_file()] + _safetensor_files(model_dir)
    for path in files:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def _cache_dir(model_dir: Path) -> Path:
    local = model_dir / "gguf"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    from platformdirs import user_cache_dir

    root = Path(os.environ.get("CODEBENCH_CACHE") or user_cache_dir("codebench-tui"))
    out = root / "gguf" / model_dir.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    return out


def gguf_path(model_dir: str | Path, quant: str, digest: str | None = None) -> Path:
    model_dir = Path(model_dir)
    return _cache_dir(model_dir) / f"{digest or source_hash(model_dir)}-{check_quant(quant)}.gguf"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def quantize(src: Path, dst: Path, quant: str, n_threads: int = 0) -> None:
    """llama.cpp's own quantizer (llama_model_quantize) from an F32 GGUF."""
    import ctypes

    from engines.adapters.llamacpp.bindings import ll as llama_cpp  # its log keeps warnings only

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        raise SpecError(f"this llama.cpp build does not know quant type '{quant}'; upgrade llama-cpp-python")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {quant} failed with code {rc} (see the worker log)")


def convert(model_dir: str | Path, quant: str = "f32", n_threads: int = 0) -> Path:
    """Return the cached GGUF for (model_dir, quant), converting and quantizing on first use."""
    model_dir = Path(model_dir)
    quant = check_quant(quant)
    load_config(model_dir)  # unsupported architectures fail before any hashing
    return _ensure(model_dir, quant, source_hash(model_dir), n_threads)


def _ensure(model_dir: Path, quant: str, digest: str, n_threads: int) -> Path:
    out = gguf_path(model_dir, quant, digest)
    if out.is_file():
        return out
    tmp = _tmp(out)
    try:
        if quant in _WRITTEN:
            write_gguf(model_dir, tmp, quant)
        else:  # llama.cpp quantizes best from full precision
            quantize(_ensure(model_dir, "f32", digest, n_threads), tmp, quant, n_threads)
        os.replace(tmp, out)  # atomic: readers never see a half-written file
    finally:
        tmp.unlink(missing_ok=True)
    return out


def convert_isolated(model_dir: str | Path, quant: str = "f32", n_threads: int = 0) -> Path:
    """convert(), writing in a child process when the file is not cached yet: the caller keeps numpy out."""
    model_dir = Path(model_dir)
    quant = check_quant(quant)
    load_config(model_dir)
    digest = source_hash(model_dir)  # reads every weight file: computed once, and passed to the child
    out = gguf_path(model_dir, quant, digest)
    if out.is_file():
        return out
    argv = [sys.executable, "-m", "engines.adapters.llamacpp.gguf", str(model_dir), quant, str(n_threads), digest]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)  # its log goes to this process's stderr
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 2:
        raise SpecError(last)
    if proc.returncode != 0 or not Path(last).is_file():
        raise RuntimeError(f"GGUF conversion of {model_dir.name} to {quant} failed (exit {proc.returncode}); "
                           "see the worker log")  # fmt: skip
    return Path(last)


def _main(argv: list[str]) -> int:
    """MODEL_DIR QUANT N_THREADS DIGEST (convert_isolated's, already hashed): prints the GGUF's path."""
    try:
        print(_ensure(Path(argv[0]), check_quant(argv[1]), argv[3], int(argv[2])))
    except SpecError as exc:
        print(exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
