"""HF -> GGUF conversion: logits round trip through llama.cpp, quantized files, bad input, cache."""

from __future__ import annotations

import json
import mmap
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp as ll
import numpy as np
import pytest

from engines.adapters.llamacpp import gguf as gc
from engines.adapters.llamacpp.engine import model_params
from engines.base import SpecError


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Path:
    return tiny_model  # engines.models.tiny.ensure_tiny() in the session cache (conftest)


@pytest.fixture(scope="module")
def prompt(tiny) -> list[int]:
    from engines.models.workloads import synthetic_prompts

    return synthetic_prompts(tiny / "tokenizer.json", 1, 48, seed=3)[0]


def llama_logits(path: Path, ids: list[int], exact: bool = True) -> np.ndarray:
    """Logits at every position of one sequence, straight from llama.cpp.

    exact: F32 KV cache and no flash attention; llama.cpp's defaults (F16 cache, flash attention
    on the CPU) round activations to F16 and move logits by ~1e-3 on their own.
    """
    model = ll.llama_model_load_from_file(str(path).encode(), model_params())  # the engine's repack choice
    assert model, f"llama.cpp could not load {path}"
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 256, 256, 1, 1
    if exact:
        cp.type_k = cp.type_v = 0  # GGML_TYPE_F32
        cp.flash_attn_type = 0  # disabled
    ctx = ll.llama_init_from_model(model, cp)
    batch = ll.llama_batch_init(len(ids), 0, 1)
    try:
        for i, t in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(ids)
        assert ll.llama_decode(ctx, batch) == 0
        n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        return np.ctypeslib.as_array(ll.llama_get_logits(ctx), shape=(len(ids), n_vocab)).copy()
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        ll.llama_model_free(model)


@pytest.fixture(scope="module")
def hf_logits(tiny, prompt) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([prompt])).logits[0].numpy()


def test_f32_round_trip_matches_hf_logits(tiny, prompt, hf_logits):
    path = gc.convert(tiny, "f32")
    got = llama_logits(path, prompt)
    assert got.shape == hf_logits.shape
    scale = np.abs(hf_logits).max()
    assert np.abs(got - hf_logits).max() < 1e-4 * scale + 1e-4, "F32 GGUF logits differ from HF fp32"
    assert (got.argmax(1) == hf_logits.argmax(1)).all()
    default = llama_logits(path, prompt, exact=False)
    assert np.abs(default - hf_logits).max() < 2e-3 * scale
    assert (default.argmax(1) == hf_logits.argmax(1)).all()


def test_f16_round_trip_is_close(tiny, prompt, hf_logits):
    path = gc.convert(tiny, "f16")
    assert gc.inspect_gguf(path)["file_type"] == 1
    got = llama_logits(path, prompt)
    assert np.abs(got - hf_logits).max() < 0.05 * np.abs(hf_logits).max()


def test_without_permutation_logits_are_wrong(tiny, prompt, hf_logits, tmp_path, monkeypatch):
    """The Q/K permutation matters: skipping it must break the round trip (the test can fail)."""
    monkeypatch.setattr(gc, "_permute", lambda w, n_head: w)
    out = tmp_path / "unpermuted.gguf"
    gc.write_gguf(tiny, out, "f32")
    got = llama_logits(out, prompt)
    assert np.abs(got - hf_logits).max() > 1e-2 * np.abs(hf_logits).max()


@pytest.mark.parametrize("quant,ftype", [("q8_0", 7), ("q4_0", 2), ("q4_k_m", 15), ("q5_k_m", 17)])
def test_quantized_files_load_and_stay_near(tiny, prompt, hf_logits, quant, ftype):
    path = gc.convert(tiny, quant)
    meta = gc.inspect_gguf(path)
    assert meta["file_type"] == ftype
    assert meta["bytes"] < gc.inspect_gguf(gc.convert(tiny, "f32"))["bytes"] / 2.5
    got = llama_logits(path, prompt)
    corr = np.corrcoef(got.ravel(), hf_logits.ravel())[0, 1]
    assert corr > 0.9, f"{quant} logits barely track fp32 (corr {corr:.3f})"


@pytest.mark.parametrize("tied,dtype", [(True, "float32"), (False, "bfloat16")])
def test_other_llama_shapes_round_trip(tiny, tmp_path, tied, dtype):
    """Tied embeddings (no lm_head), bf16 safetensors, MHA with head_dim != hidden/heads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=4096, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=512,
                      tie_word_embeddings=tied, rope_theta=50000.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    shutil.copy(tiny / "tokenizer.json", tmp_path / "tokenizer.json")
    ids = list(range(3, 40))
    fresh = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)  # .float() would keep bf16 RoPE buffers
    with torch.inference_mode():
        want = fresh(torch.tensor([ids])).logits[0].numpy()
    got = llama_logits(gc.convert(tmp_path, "f32"), ids)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max() + 1e-4


def test_cache_is_reused_and_keyed_by_content(tiny, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny, model, ignore=shutil.ignore_patterns("gguf"))
    first = gc.convert(model, "f32")
    assert first.parent == model / "gguf" and first.name.endswith("-f32.gguf")
    stamp = first.stat().st_mtime_ns
    assert gc.convert(model, "f32") == first and first.stat().st_mtime_ns == stamp
    cfg = json.loads((model / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-6
    (model / "config.json").write_text(json.dumps(cfg))
    second = gc.convert(model, "f32")
    assert second != first and second.is_file()
    assert not [p for p in (model / "gguf").iterdir() if p.name.endswith(".tmp")]


def test_user_gguf_is_validated(tiny, tmp_path):
    good = gc.convert(tiny, "q8_0")
    assert gc.inspect_gguf(good)["architecture"] == "llama"

    text = tmp_path / "notes.gguf"
    text.write_text("hello, I am not a model\n")
    with pytest.raises(SpecError, match="not a GGUF file"):
        gc.inspect_gguf(text)

    blob = good.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SpecError, match="truncated"):
        gc.inspect_gguf(cut)

    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(blob[:200])
    with pytest.raises(SpecError, match="truncated or corrupt|truncated"):
        gc.inspect_gguf(header_only)

    future = tmp_path / "v9.gguf"
    future.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + blob[8:4096])
    with pytest.raises(SpecError, match="version 9"):
        gc.inspect_gguf(future)

    with pytest.raises(SpecError, match="does not exist"):
        gc.inspect_gguf(tmp_path / "missing.gguf")


def test_unknown_quant_and_architecture(tiny, tmp_path):
    with pytest.raises(SpecError, match="unknown GGUF quant 'q3_x'"):
        gc.convert(tiny, "q3_x")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(SpecError, match="supports Llama-family models .* not GPT2LMHeadModel"):
        gc.convert(other, "f32")


def test_tokenizer_metadata(tiny):
    from gguf import GGUFReader

    r = GGUFReader(gc.convert(tiny, "f32"))
    field = lambda k: r.get_field(k).contents()  # noqa: E731
    cfg = json.loads((tiny / "config.json").read_text())
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2"
    assert len(field("tokenizer.ggml.tokens")) == cfg["vocab_size"]
    assert field("tokenizer.ggml.eos_token_id") == cfg["eos_token_id"]
    assert field("tokenizer.ggml.padding_token_id") == cfg["pad_token_id"]
    assert field("tokenizer.ggml.token_type")[:2] == [3, 3]  # <|endoftext|>, <|pad|>: control
    assert len(field("tokenizer.ggml.merges")) > 1000
    assert field("llama.rope.dimension_count") == cfg["head_dim"]
    assert field("llama.context_length") == cfg["max_position_embeddings"]


def test_llama_cpp_tokenizes_like_hf(tiny):
    """The vocab, merges and pre-tokenizer written are the ones llama.cpp needs to tokenize as HF does."""
    from tokenizers import Tokenizer

    text = "def add(a, b):\n    return a + b  # 42 items\n\nclass Foo(object):\n\tpass\n"
    want = Tokenizer.from_file(str(tiny / "tokenizer.json")).encode(text).ids
    mp = ll.llama_model_default_params()
    mp.vocab_only = True
    model = ll.llama_model_load_from_file(str(gc.convert(tiny, "f32")).encode(), mp)
    try:
        vocab = ll.llama_model_get_vocab(model)
        raw = text.encode()
        buf = (ll.llama_token * 512)()
        n = ll.llama_tokenize(vocab, raw, len(raw), buf, 512, False, False)
        assert list(buf[:n]) == want
    finally:
        ll.llama_model_free(model)


def test_converter_imports_neither_torch_nor_llama_cpp():
    code = (
        "import sys, engines.adapters.llamacpp.gguf as g; "
        "assert 'torch' not in sys.modules and 'llama_cpp' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_header_reader_agrees_with_gguf_reader(tiny):
    """inspect_gguf reads headers without numpy; gguf's own reader (numpy) must see the same file."""
    from gguf import GGUFReader

    for quant in ("f32", "f16", "q8_0", "q4_0"):
        path = gc.convert(tiny, quant)
        reader, meta = GGUFReader(path), gc.inspect_gguf(path)
        assert meta["architecture"] == reader.get_field("general.architecture").contents()
        assert meta["file_type"] == reader.get_field("general.file_type").contents()
        assert meta["n_tensors"] == len(reader.tensors)
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            fields, tensors, data_offset = gc._read_header(buf)
        assert data_offset == reader.data_offset
        assert [(o, t) for o, t, _ in tensors] == [(int(x.data_offset) - reader.data_offset, int(x.tensor_type))
                                                  for x in reader.tensors]  # fmt: skip
        assert [n for _, _, n in tensors] == [int(x.n_elements) for x in reader.tensors]


def test_hostile_header_counts_fail_cleanly(tiny, tmp_path):
    """Counts a header cannot hold (2^63 fields, a string of 2^40 bytes) are refused, not allocated or looped over."""
    blob = gc.convert(tiny, "q4_0").read_bytes()
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(blob[:16] + (2**63).to_bytes(8, "little") + blob[24:4096])
    with pytest.raises(SpecError, match="truncated or corrupt"):
        gc.inspect_gguf(huge)
    long_key = tmp_path / "long.gguf"
    long_key.write_bytes(blob[:24] + (2**40).to_bytes(8, "little") + blob[32:4096])
    with pytest.raises(SpecError, match="truncated or corrupt"):
        gc.inspect_gguf(long_key)


def test_reading_a_gguf_and_the_cached_path_import_no_numpy(tiny):
    """The llama.cpp worker keeps numpy out of its process (bindings.py): what it calls on a cached GGUF must too."""
    gc.convert(tiny, "q4_0")
    code = ("import sys; from engines.adapters.llamacpp import gguf as g; from engines.models.tiny import ensure_tiny; "
            "p = g.convert_isolated(ensure_tiny(), 'q4_0'); g.inspect_gguf(p); print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_convert_isolated_writes_in_a_child_and_passes_its_spec_errors(tiny, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny, model, ignore=shutil.ignore_patterns("gguf"))
    got = gc.convert_isolated(model, "q4_0")
    assert got == gc.gguf_path(model, "q4_0") and gc.inspect_gguf(got)["file_type"] == 2
    assert gc.convert_isolated(model, "q4_0") == got  # cached: no child
    cfg = json.loads((model / "config.json").read_text())
    cfg["rope_parameters"] = {**(cfg.get("rope_parameters") or {}), "rope_type": "yarn", "factor": 4.0}
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="RoPE scaling 'yarn' is not supported"):
        gc.convert_isolated(model, "f32")
    assert not [p for p in (model / "gguf").iterdir() if p.name.endswith(".tmp")]


def test_a_string_array_longer_than_the_file_fails_before_its_loop(tmp_path):
    """A header's array count must fit the bytes left at 8 bytes a string: 4000 strings in 4 kB are refused at once."""
    import struct

    key = b"tokenizer.ggml.tokens"
    blob = (b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 4000)
            + b"\0" * 4096)  # fmt: skip
    path = tmp_path / "vocab.gguf"
    path.write_bytes(blob)
    with pytest.raises(SpecError, match="truncated or corrupt .*an array of 4000 items"):
        gc.inspect_gguf(path)
