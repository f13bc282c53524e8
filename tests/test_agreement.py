"""engines.quality.agreement: pure logic of the greedy agreement check."""

import pytest

from engines.quality.agreement import compare_prompt, format_line, summary


def test_identical_sequences_agree_fully():
    s = summary([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 6]])
    assert s["token_agreement"] == 1.0
    assert s["prompts_identical"] == 1.0
    assert s["first_divergence"] == [None, None]
    assert s["first_divergence_min"] is None


def test_first_divergence_and_share():
    s = summary([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 9, 4], [0, 6, 7, 8]])
    assert s["first_divergence"] == [2, 0]
    assert s["token_agreement"] == pytest.approx(6 / 8)
    assert s["prompts_identical"] == 0.0
    assert s["first_divergence_min"] == 0
    assert s["per_prompt"][0] == {"index": 0, "n_tokens": 4, "n_same": 3, "first_divergence": 2}


def test_short_candidate_diverges_where_it_stops():
    r = compare_prompt(0, [1, 2, 3], [1, 2])
    assert r.first_divergence == 2 and r.n_same == 2 and not r.identical
    assert compare_prompt(0, [1, 2], [1, 2, 3]).first_divergence == 2


def test_prompt_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same prompts"):
        summary([[1]], [[1], [2]])


def test_format_line():
    s = summary([[1, 2], [3, 4]], [[1, 2], [3, 0]])
    line = format_line("llama.cpp q4_0", s)
    assert line == "llama.cpp q4_0: 75.0% tokens identical, 1/2 prompts identical, first divergence: token 1"
