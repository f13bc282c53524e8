import math

import pytest

from store.metrics import ratio, summarise, t95


def test_summarise_median_spread_ci_and_rates():
    repeats = [
        {"latencies_s": [1.0, 1.0], "ttft_s": [0.1, 0.1], "tokens": [64, 64]},
        {"latencies_s": [2.0, 2.0], "ttft_s": [0.2, 0.2], "tokens": [64, 64]},
        {"latencies_s": [1.5, 1.5], "ttft_s": [0.3, 0.3], "tokens": [64, 64]},
    ]
    s = summarise(repeats, batch=2, output_len=32)
    assert s["latency_s"] == 1.5
    assert s["latency_spread"] == pytest.approx((2.0 - 1.0) / 1.5)
    assert s["latency_ci95"] == pytest.approx(4.303 * 0.5 / math.sqrt(3))
    assert s["tokens_per_s"] == pytest.approx(64 / 1.5)
    assert s["ttft_s"] == pytest.approx(0.2)
    assert s["decode_tps"] == pytest.approx(2 * 31 / (1.5 - 0.2))


def test_summarise_single_repeat_has_no_ci_and_empty_is_none():
    s = summarise([{"latencies_s": [0.5], "ttft_s": [None], "tokens": [8]}], batch=1, output_len=8)
    assert s["latency_ci95"] is None and s["ttft_s"] is None and s["decode_tps"] is None
    assert s["tokens_per_s"] == 16
    assert summarise([], 1, 8)["latency_s"] is None


def test_t95_and_ratio():
    assert t95(1) == 12.706 and t95(100) == pytest.approx(1.983972, abs=1e-6)  # beyond the table: computed
    with pytest.raises(ValueError):
        t95(0)
    assert ratio(3.0, 2.0) == 1.5 and ratio(None, 2.0) is None and ratio(1.0, 0) is None
