"""llama.cpp speculative decoding (prompt lookup, draft model): greedy identity on tiny, the study through the CLI."""

from __future__ import annotations

import json

import pytest

from engines.adapters.llamacpp.speculative import LlamaCppSpeculative, propose_ngram
from engines.models.workloads import synthetic_prompts
from tests.helpers import FAST, cli, rows


@pytest.mark.parametrize("tokens, k, ngram_max, want", [
    ([1, 2, 3, 4, 2, 3], 3, 2, [4, 2, 3]),   # the bigram (2, 3) first occurred at 1: what followed it
    ([1, 2, 3, 9, 3], 2, 2, [9, 3]),         # no earlier (9, 3): the unigram 3 at 2
    ([7, 1, 7, 2, 7], 1, 1, [1]),            # the first occurrence wins, as in HF's prompt lookup
    ([5, 6, 7], 2, 2, []),                   # nothing repeats
    ([4, 4], 3, 2, [4]),                     # only as much as followed
    ([1, 2, 1], 0, 2, []),                   # no room left for drafts
])  # fmt: skip
def test_propose_ngram(tokens, k, ngram_max, want):
    assert propose_ngram(tokens, k, ngram_max) == want


def _numpy_ngram(tokens: list[int], k: int, ngram_max: int) -> list[int]:
    """The earlier numpy proposer (sliding windows): the list search that replaced it must agree."""
    import numpy as np

    if k < 1 or len(tokens) < 2:
        return []
    arr = np.asarray(tokens)
    for n in range(min(ngram_max, len(tokens) - 1), 0, -1):
        hits = np.flatnonzero((np.lib.stride_tricks.sliding_window_view(arr[:-1], n) == arr[-n:]).all(axis=1))
        if len(hits):
            return arr[int(hits[0]) + n : int(hits[0]) + n + k].tolist()
    return []


def test_propose_ngram_agrees_with_the_numpy_search_on_random_contexts():
    import random

    rng = random.Random(0)
    for _ in range(3000):
        tokens = [rng.randrange(rng.choice((2, 4, 16))) for _ in range(rng.randrange(0, 40))]
        k, n = rng.randrange(0, 6), rng.randrange(1, 5)
        assert propose_ngram(tokens, k, n) == _numpy_ngram(tokens, k, n), (tokens, k, n)


def _engine(path, spec, quant="f32", **options):
    e = LlamaCppSpeculative({"engine": "llama.cpp", "precision": None, "attention": None, "quant": quant,
                             "options": {"n_threads": 1, **options}, "spec": spec})  # fmt: skip
    e.load(str(path), "cpu")
    return e


def test_ngram_speculation_keeps_greedy_tokens_and_counts_add_up(tiny_model):
    prompts = synthetic_prompts(tiny_model / "tokenizer.json", 3, 64, 1)
    plain, spec = _engine(tiny_model, "none"), _engine(tiny_model, "ngram=4")
    want = plain.generate(prompts, 24)
    got = spec.generate(prompts, 24)
    assert got.tokens == want.tokens and all(len(t) == 24 for t in got.tokens)
    x = got.extra
    assert 0 < x["spec_accepted_tokens"] <= x["spec_draft_tokens"] <= 4 * x["spec_drafts"]
    assert x["spec_steps"] < 23  # accepted drafts saved target forwards (tiny repeats itself)
    assert x["time_draft_s"] > 0 and x["time_verify_s"] > 0 and x["time_total_s"] >= x["time_verify_s"]
    assert want.extra["spec_method"] == "none" and want.extra["spec_steps"] == 24
    one = spec.generate(prompts[:1], 24)  # one sequence: every step yields its accepted drafts + 1 token
    assert one.tokens == want.tokens[:1]
    assert one.extra["spec_accepted_tokens"] + one.extra["spec_steps"] == 24 - 1


def test_draft_model_speculation_keeps_greedy_tokens(tiny_model):
    """tiny as its own draft: every draft accepted, k + 1 tokens per target step; tiny-draft: other weights, same tokens."""
    prompts = synthetic_prompts(tiny_model / "tokenizer.json", 3, 64, 1)
    want = _engine(tiny_model, "none").generate(prompts, 21).tokens
    itself = _engine(tiny_model, "draft=tiny", draft_tokens=4)
    res = itself.generate(prompts, 21)
    assert res.tokens == want and res.extra["spec_method"] == "draft"
    x = res.extra
    assert x["spec_accepted_tokens"] == x["spec_draft_tokens"] == 3 * 16 and x["spec_steps"] == 4  # 20 = 4 x (4 drafts + 1)
    assert x["time_draft_s"] > 0 and itself.generate(prompts[:1], 21).tokens == want[:1]
    other = _engine(tiny_model, "draft=tiny-draft", draft_tokens=3)
    got = other.generate(prompts, 21)
    assert got.tokens == want and got.extra["spec_accepted_tokens"] <= got.extra["spec_draft_tokens"]
    other.unload()
    assert other.draft is None


def test_llamacpp_spec_study_stores_acceptance_and_identity(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--engine", "llama.cpp", "--quant", "f32", "--spec", "ngram=4,draft=tiny-draft", "--opt", "n_threads=1",
               "--batch", "1,2", "--input-len", "48", "--output-len", "16", *FAST, db=db, check=True)  # fmt: skip
    runs = rows(db, "select id, config from run order by created_at")
    assert [json.loads(c)["spec"] for _, c in runs] == ["none", "ngram=4", "draft=tiny-draft"]
    for run_id, _ in runs[1:]:
        cells = rows(db, "select batch, metrics from cell where run_id=? order by idx", run_id)
        assert [b for b, _ in cells] == [1, 2]
        for _, metrics in cells:
            m = json.loads(metrics)
            assert m["reference"]["identical"] is True and m["reference"]["speedup"] > 0
            assert 0 <= m["speculative"]["acceptance_rate"] <= 1 and m["breakdown"]["verify_ms_per_token"] > 0
    assert "speculative decoding" in proc.stdout


def test_llamacpp_refuses_a_gguf_draft_in_one_line(tmp_path):
    gguf = tmp_path / "d.gguf"
    gguf.write_bytes(b"GGUF")
    proc = cli("run", "--engine", "llama.cpp", "--spec", f"draft={gguf}", "--dry-run", db=tmp_path / "r.db")
    assert proc.returncode == 2 and "must be an HF model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.db").exists()
