"""The ratio intervals of store.significance on known samples, and their properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.metrics import summarise, t95, t_quantile
from store.significance import compare, ratio_text, repeat_value

# 0.975 quantiles of Student's t, computed with mpmath (betainc at 30 digits, findroot), not with this code.
T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528, 5: 2.57058183564, 10: 2.22813885199,
        30: 2.0422724563, 31: 2.0395134464, 40: 2.02107539031, 60: 2.00029782201, 120: 1.97993040508,
        1000: 1.96233908083, 1.5: 6.01666310443, 2.5: 3.574654842, 3.7: 2.86752070719, 7.25: 2.34819484911,
        17.3: 2.10703200375, 45.5: 2.01349268293}  # fmt: skip

STUDY = {"group_id": "g1", "runtime": {"schedule": "interleaved"}}


def cell(latencies: list[float], *, batch: int = 2, output_len: int = 16, rounds: bool = True,
         ttft: float | None = 0.05) -> dict:  # fmt: skip
    """A stored cell whose repeats have the given mean latencies (two minibatches each, ±1% around it)."""
    repeats = []
    for i, lat in enumerate(latencies):
        rep = {"latencies_s": [lat * 1.01, lat * 0.99], "ttft_s": [ttft, ttft], "tokens": [batch * output_len] * 2}
        if rounds:
            rep["round"] = i
        repeats.append(rep)
    return {"batch": batch, "input_len": 32, "output_len": output_len, "status": "done", "repeats": repeats,
            **summarise(repeats, batch, output_len)}  # fmt: skip


def test_t_quantiles_match_an_independent_computation():
    for df, want in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(want, abs=2e-9)
        assert t95(df) == pytest.approx(want, abs=6e-4)  # 1..30 keep the printed 3-decimal table
    with pytest.raises(ValueError):
        t95(0.5)


def test_repeat_values_follow_summarise():
    c = cell([0.5], batch=4, output_len=8, ttft=0.1)
    rep = c["repeats"][0]
    assert repeat_value(rep, "latency_s", 4, 8) == pytest.approx(0.5)
    assert repeat_value(rep, "tokens_per_s", 4, 8) == pytest.approx(c["tokens_per_s"])
    assert repeat_value(rep, "ttft_s", 4, 8) == pytest.approx(0.1)
    assert repeat_value(rep, "decode_tps", 4, 8) == pytest.approx(c["decode_tps"]) == pytest.approx(4 * 7 / 0.4)
    assert repeat_value({"latencies_s": [0.1], "ttft_s": [0.2]}, "decode_tps", 4, 8) is None  # not positive


def test_paired_interval_worked_example():
    a_lat, b_lat = [1.0, 1.2, 0.9, 1.1], [2.1, 2.3, 1.9, 2.4]
    a, b = cell(a_lat), cell(b_lat)
    got = compare(a, b, "tokens_per_s", run_a=STUDY, run_b=STUDY)
    # tokens/s per round is 32 / latency, so log(a_i / b_i) = log(b_lat_i / a_lat_i)
    d = np.log(np.array(b_lat) / np.array(a_lat))
    half = 3.182 * d.std(ddof=1) / math.sqrt(4)
    point = a["tokens_per_s"] / b["tokens_per_s"]  # the medians' ratio the table shows
    assert got.method == "paired" and (got.n_a, got.n_b) == (4, 4)
    assert got.ratio == pytest.approx(point) == pytest.approx(2.2 / 1.05)
    assert got.ci_low == pytest.approx(point * math.exp(-half))
    assert got.ci_high == pytest.approx(point * math.exp(half))
    assert got.significant and got.reason == "interval excludes 1"


def test_welch_interval_worked_example():
    a_lat, b_lat = [1.0, 1.2, 0.9, 1.1, 1.05], [2.1, 2.6, 1.7]
    a, b = cell(a_lat), cell(b_lat)
    got = compare(a, b, "latency_s")  # no runs given: cannot pair
    la, lb = np.log(a_lat), np.log(b_lat)
    va, vb = la.var(ddof=1) / 5, lb.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 2)
    assert 2 < df < 3  # a fractional df: the computed quantile, not the table
    mp = pytest.importorskip("mpmath")  # an independent t quantile for this fractional df
    cdf = lambda t: 1 - mp.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2  # noqa: E731
    half = float(mp.findroot(lambda t: cdf(t) - 0.975, 4.0)) * math.sqrt(va + vb)
    point = 1.05 / 2.1
    assert got.method == "welch" and got.ratio == pytest.approx(point)
    assert got.ci_low == pytest.approx(point * math.exp(-half)) and got.ci_high == pytest.approx(point * math.exp(half))
    assert got.significant


def test_pairing_needs_one_interleaved_study_and_the_same_rounds():
    a, b = cell([1.0, 1.1, 0.9]), cell([1.0, 1.05, 0.95])
    other_study = {"group_id": "g2", "runtime": {"schedule": "interleaved"}}
    sequential = {"group_id": "g1", "runtime": {"schedule": "sequential"}}
    assert compare(a, b, "latency_s", run_a=STUDY, run_b=STUDY).method == "paired"
    assert compare(a, b, "latency_s", run_a=STUDY, run_b=other_study).method == "welch"
    assert compare(a, b, "latency_s", run_a=sequential, run_b=sequential).method == "welch"
    assert compare(a, b, "latency_s", run_a=STUDY, run_b={"group_id": "g1", "runtime": {}}).method == "welch"
    assert compare(a, cell([1.0, 1.1, 0.9], rounds=False), "latency_s", run_a=STUDY, run_b=STUDY).method == "welch"
    assert compare(a, cell([1.0, 1.1]), "latency_s", run_a=STUDY, run_b=STUDY).method == "welch"  # rounds differ


def test_pairing_cancels_drift_that_welch_cannot():
    """Both runs slow down alike round by round (a neighbour's job): paired sees a steady 1.25x."""
    drift = [1.0, 1.6, 0.8, 2.0]
    a, b = cell([0.8 * x for x in drift]), cell(drift)
    paired = compare(a, b, "tokens_per_s", run_a=STUDY, run_b=STUDY)
    welch = compare(a, b, "tokens_per_s")
    assert paired.ratio == pytest.approx(1.25) and paired.significant
    assert paired.ci_high - paired.ci_low < 1e-9
    assert welch.ci_low < 1 < welch.ci_high and not welch.significant and welch.reason == "interval contains 1"


def test_one_repeat_has_no_interval_and_is_never_significant():
    got = compare(cell([0.5]), cell([1.0, 1.0, 1.0]), "tokens_per_s")
    assert got.ratio == pytest.approx(2.0) and got.ci_low is None and got.method is None
    assert not got.significant and got.reason == "one repeat: no interval"
    assert ratio_text(got) == "≈2.00×"
    assert compare({**cell([0.5]), "repeats": []}, cell([1.0, 1.0]), "latency_s").reason == "no repeats stored"


def test_noise_floor_decides_small_but_clear_changes():
    a, b = cell([1.00, 1.01, 0.99, 1.00]), cell([1.03, 1.04, 1.02, 1.03])
    clear = compare(a, b, "latency_s", run_a=STUDY, run_b=STUDY)
    assert clear.significant and clear.ci_high < 1
    floored = compare(a, b, "latency_s", run_a=STUDY, run_b=STUDY, floor=0.05)
    assert not floored.significant and floored.reason == "within the noise floor ±5.0%"
    assert (floored.ci_low, floored.ci_high) == (clear.ci_low, clear.ci_high)
    assert compare(a, b, "latency_s", run_a=STUDY, run_b=STUDY, floor=0.01).significant


def test_peak_memory_is_one_sample_judged_by_a_fixed_threshold():
    a, b = {"peak_rss_bytes": 104 << 20}, {"peak_rss_bytes": 100 << 20}
    small = compare(a, b, "peak_mem")
    assert small.ratio == pytest.approx(1.04) and small.method == "threshold" and not small.significant
    big = compare({"peak_gpu_bytes": 80 << 20, "peak_rss_bytes": 900 << 20}, b, "peak_mem")  # the GPU peak first
    assert big.ratio == pytest.approx(0.8) and big.significant and big.ci_low is None


def test_ratio_text():
    a, b = cell([1.0, 1.1, 0.9, 1.0]), cell([1.5, 1.6, 1.4, 1.5])
    sig = compare(a, b, "tokens_per_s", run_a=STUDY, run_b=STUDY)
    assert ratio_text(sig) == f"{sig.ratio:.2f}× ({sig.ci_low:.2f}–{sig.ci_high:.2f})"
    same = compare(a, cell([1.0, 1.2, 0.8, 1.1]), "tokens_per_s", run_a=STUDY, run_b=STUDY)
    assert not same.significant and ratio_text(same).startswith("≈1.")


# --- properties ----------------------------------------------------------------------------------

latency = st.floats(min_value=0.01, max_value=10.0, allow_nan=False)
samples = st.lists(latency, min_size=2, max_size=8)
pairing = st.sampled_from([(STUDY, STUDY), (None, None)])


@settings(max_examples=200, deadline=None)
@given(samples, samples, pairing, st.sampled_from(["tokens_per_s", "latency_s", "decode_tps"]))
def test_interval_holds_the_point_and_swapping_inverts_it(xs, ys, runs, metric):
    a, b = cell(xs), cell(ys)
    ab = compare(a, b, metric, run_a=runs[0], run_b=runs[1])
    ba = compare(b, a, metric, run_a=runs[1], run_b=runs[0])
    if ab.ratio is None:  # decode tok/s needs latency > TTFT
        return
    if ab.ci_low is None:  # fewer than two repeats with a value
        assert ba.ci_low is None and not ab.significant and not ba.significant
        return
    assert ab.ci_low <= ab.ratio <= ab.ci_high
    assert ba.ratio == pytest.approx(1 / ab.ratio, rel=1e-9)
    assert ba.ci_low == pytest.approx(1 / ab.ci_high, rel=1e-9)
    assert ba.ci_high == pytest.approx(1 / ab.ci_low, rel=1e-9)
    assert (ab.significant, ab.method) == (ba.significant, ba.method)


@settings(max_examples=100, deadline=None)
@given(samples, pairing, st.sampled_from([None, 0.0, 0.03]))
def test_identical_samples_are_never_significant(xs, runs, floor):
    got = compare(cell(xs), cell(xs), "tokens_per_s", run_a=runs[0], run_b=runs[1], floor=floor)
    assert got.ratio == 1.0 and not got.significant and ratio_text(got).startswith("≈1.00×")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-0.05, max_value=0.05), min_size=6, max_size=12), pairing)
def test_a_twofold_shift_with_small_noise_is_significant(noise, runs):
    """Repeats within ±5% of 0.5 s and of 1.0 s: half the latency, twice the tokens/s, whatever the noise."""
    half = len(noise) // 2
    a = cell([0.5 * (1 + e) for e in noise[:half]])
    b = cell([1.0 * (1 + e) for e in noise[half : 2 * half]])
    got = compare(a, b, "tokens_per_s", run_a=runs[0], run_b=runs[1], floor=0.05)
    assert got.significant and got.ratio == pytest.approx(2.0, rel=0.12) and got.ci_low > 1
