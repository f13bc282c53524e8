"""Sliding-window perplexity: window arithmetic, corpora, and tiny against a direct transformers run."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.base import SpecError
from engines.quality import perplexity as P


@given(st.integers(0, 400), st.integers(2, 64), st.data())
def test_every_token_scored_once_with_enough_context(n, window, data):
    stride = data.draw(st.integers(1, window))
    scored = []
    for begin, end, ctx in P.spans(n, window, stride):
        assert end - begin <= window and 1 <= ctx < end - begin
        scored += range(begin + ctx, end)
        if stride < window and begin > 0:
            assert ctx >= window - stride  # each scored token sees at least this much context
    if stride < window:
        assert scored == list(range(1, n))
    else:  # non-overlapping chunks: each chunk's first token has no context and is skipped
        assert scored == [i for i in range(1, n) if i % window]


def test_uniform_model_has_perplexity_of_its_vocabulary():
    vocab = 50
    calls = []

    def uniform(window, ctx):
        calls.append((len(window), ctx))
        return [-math.log(vocab)] * (len(window) - ctx)

    res = P.perplexity([list(range(100)), list(range(7)), [3]], uniform, window=16, stride=8)
    assert res.tokens == 99 + 6 and res.ppl == pytest.approx(vocab)
    assert res.windows == len(calls) == 12 + 1


def test_perplexity_is_token_weighted():
    # Document A: 11 tokens at log p = -1; document B: 2 tokens at log p = -4.
    def fn(window, ctx):
        return [-1.0 if window[0] == 0 else -4.0] * (len(window) - ctx)

    res = P.perplexity([[0] * 12, [1] * 3], fn, window=4, stride=2)
    assert res.tokens == 13 and res.mean_nll == pytest.approx((11 * 1 + 2 * 4) / 13)


def test_bad_window_or_stride():
    for window, stride in ((1, 1), (8, 0), (8, 9)):
        with pytest.raises(SpecError, match="window >= 2"):
            P.perplexity([[1, 2, 3]], lambda w, c: [0.0] * (len(w) - c), window, stride)


def test_stdlib_corpus_is_deterministic():
    files = P.stdlib_files(12)
    assert len(files) == 12 and files == P.stdlib_files(12)
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    root = P.Path(P.sysconfig.get_paths()["stdlib"])
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel)
    texts = P.load_corpus("stdlib:3")
    assert len(texts) == 3 and texts == P.load_corpus("stdlib", n_files=3) and all(texts)
    with pytest.raises(SpecError, match="stdlib:N"):
        P.load_corpus("stdlib:zero")


def test_text_and_jsonl_corpora(tmp_path):
    text = tmp_path / "code.py"
    text.write_text("def f():\n    return 1\n")
    assert P.load_corpus(str(text)) == ["def f():\n    return 1\n"]
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a = 1"}\n\n{"text": "b = 2", "lang": "py"}\n')
    assert P.load_corpus(str(good)) == ["a = 1", "b = 2"]
    with pytest.raises(SpecError, match="does not exist"):
        P.load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SpecError, match="is empty"):
        P.load_corpus(str(tmp_path / "empty.txt"))


@pytest.mark.parametrize("line,problem", [
    ('{"text": "b = 2"', "not valid JSON"),
    ('{"content": "b = 2"}', "needs a string field 'text'"),
    ('{"text": 5}', "needs a string field 'text'"),
    ('"just a string"', "needs a string field 'text'"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "a = 1"}) + "\n" + json.dumps({"text": "x"}) + "\n" + line + "\n")
    with pytest.raises(SpecError) as err:
        P.load_corpus(str(path))
    assert str(err.value).startswith(f"{path}:3: {problem}") and "\n" not in str(err.value)


def _direct_hf_perplexity(model, docs, window, stride):
    """The transformers docs recipe: labels masked with -100, the model's own loss."""
    import torch

    nll, count = 0.0, 0
    for doc in docs:
        ids = torch.tensor([doc])
        prev_end = 0
        for begin in range(0, ids.size(1), stride):
            end = min(begin + window, ids.size(1))
            trg_len = end - prev_end
            input_ids = ids[:, begin:end]
            labels = input_ids.clone()
            labels[:, :-trg_len] = -100
            n_loss = int((labels[:, 1:] != -100).sum())
            if n_loss:
                with torch.no_grad():
                    loss = model(input_ids, labels=labels).loss
                nll += float(loss) * n_loss
                count += n_loss
            prev_end = end
            if end == ids.size(1):
                break
    return math.exp(nll / count), count


def test_tiny_matches_direct_transformers_computation():
    import torch

    from engines.models.tiny import ensure_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: spinning intra-op threads only slow this down
    try:
        _compare_with_direct(P.HFLogprobs.load(ensure_tiny()))
    finally:
        torch.set_num_threads(threads)


def _compare_with_direct(fn):
    docs = [fn.encode(t)[:160] for t in P.load_corpus("stdlib:3")]
    assert sum(map(len, docs)) > 200
    for window, stride in ((64, 24), (48, 48)):
        ours = P.perplexity(docs, fn, window, stride)
        direct, count = _direct_hf_perplexity(fn.model, docs, window, stride)
        assert ours.tokens == count
        assert ours.ppl == pytest.approx(direct, rel=1e-5)
    assert math.isfinite(ours.ppl) and ours.ppl > 1
