"""The synthetic workload: exact-length, round-tripping, seeded prompts cut from stdlib source."""

from __future__ import annotations

import platform
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.base import SpecError
from engines.models.tiny import ensure_tiny, tokenizer_path
from engines.models.workloads import corpus_fingerprint, load_tokenizer, round_trips, synthetic_prompts


@pytest.fixture(scope="module")
def tok_file(tiny_model):
    return tokenizer_path(tiny_model)


def check(tok_file, prompts, batch, length):
    tok = load_tokenizer(tok_file)
    assert len(prompts) == batch
    assert all(len(p) == length for p in prompts)
    assert len({tuple(p) for p in prompts}) == batch, "prompts in a batch must differ"
    for p in prompts:
        assert round_trips(tok, p)
        assert tok.encode(tok.decode(p)).ids == p
        assert all(2 <= i < tok.get_vocab_size() for i in p)  # real source: no special tokens


@pytest.mark.parametrize("batch,length", [(1, 1), (4, 2), (8, 32), (4, 128), (2, 1000)])
def test_exact_length_distinct_round_trip(tok_file, batch, length):
    check(tok_file, synthetic_prompts(tok_file, batch, length, 0), batch, length)


def test_same_arguments_same_prompts_and_batches_nest(tok_file):
    a = synthetic_prompts(tok_file, 4, 64, 7)
    assert synthetic_prompts(tok_file, 4, 64, 7) == a
    assert synthetic_prompts(tok_file, 2, 64, 7) == a[:2]  # batch 2 is the start of batch 4
    assert synthetic_prompts(tok_file, 4, 64, 8) != a
    assert not {tuple(p) for p in synthetic_prompts(tok_file, 4, 64, 8)} & {tuple(p) for p in a}


def test_prompts_are_python_source(tok_file):
    tok = load_tokenizer(tok_file)
    text = "".join(tok.decode(p) for p in synthetic_prompts(tok_file, 8, 128, 0))
    assert any(word in text for word in ("def ", "self", "return", "import "))


def test_long_prompts(tok_file):
    check(tok_file, synthetic_prompts(tok_file, 2, 16384, 3), 2, 16384)


def test_hf_tokenizer_sees_exactly_the_same_tokens(tiny_model, tok_file):
    """The text-in path (HF pipeline) must feed the model exactly `length` tokens."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model)
    for p in synthetic_prompts(tok_file, 8, 96, 5):
        assert hf(hf.decode(p))["input_ids"] == p


def test_prompts_are_fast_after_the_first_call(tok_file):
    synthetic_prompts(tok_file, 1, 128, 0)
    start = time.perf_counter()
    synthetic_prompts(tok_file, 64, 128, 11)
    # ~2 ms a prompt on an idle core; the bound leaves room for a busy shared CI machine.
    assert time.perf_counter() - start < 5.0


def test_corpus_fingerprint():
    fp = corpus_fingerprint()
    assert fp == corpus_fingerprint()
    assert fp["python"] == platform.python_version()
    assert fp["files"] > 100 and fp["chars"] > 1_000_000
    assert len(fp["files_sha256"]) == 64 and len(fp["content_sha256"]) == 64


@pytest.mark.parametrize("batch,length,seed", [(0, 32, 0), (1, 0, 0), (-1, 32, 0), (1, 32, -5)])
def test_bad_arguments_are_one_line_errors(tok_file, batch, length, seed):
    with pytest.raises(SpecError) as err:
        synthetic_prompts(tok_file, batch, length, seed)
    assert "\n" not in str(err.value)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        synthetic_prompts(tmp_path / "tokenizer.json", 1, 8, 0)


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 3000), seed=st.integers(0, 2**63 - 1), batch=st.integers(1, 3))
def test_property_exact_round_tripping_prompts(length, seed, batch):
    tok_file = tokenizer_path(ensure_tiny())  # hypothesis cannot take function fixtures; this is cached on disk
    prompts = synthetic_prompts(tok_file, batch, length, seed)
    check(tok_file, prompts, batch, length)
    assert synthetic_prompts(tok_file, batch, length, seed) == prompts
