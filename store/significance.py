"""Is the ratio of two runs' cells more than noise? A 95% confidence interval from the stored repeats.

For one grid point measured by two runs (a over b, e.g. a run over its baseline), each repeat gives one
value of the metric. The interval is a Student t interval on the log of the ratio:

- **paired** when both runs belong to one study (group), were measured with the interleaved schedule and
  carry the same rounds: d_i = log a_i - log b_i per round, half-width t(0.975, n-1) * sd(d) / sqrt(n).
  Both runs' repeats of a round ran back to back, so drift of the host (a neighbour's job, clocks)
  moves both alike and cancels in d_i.
- **Welch** otherwise: log values of each run's repeats, half-width t(0.975, df) * sqrt(va/na + vb/nb)
  with the Welch-Satterthwaite df.

The interval is centred on the ratio the tables show (the stored figures, medians of the repeats), as
exp(log(point) +- half-width), not on the mean of the logs: the reader then never sees a ratio outside
its own interval, and the median stays robust to one stray repeat while the half-width carries the
uncertainty. Identical repeats give a zero-width interval.

A ratio is significant when its interval excludes 1 and, where the host's noise floor (an A/A pair's
spread, store.noise) is known, the change is beyond it in either direction (|log ratio| > log(1 + floor),
the same log-symmetric measure the floor is taken in, so swapping a and b does not change the verdict).
One repeat on either side gives no interval and never a significant ratio. Peak memory has one sample
per cell: it differs only beyond PEAK_MEM_THRESHOLD (allocator and RSS peaks of identical runs move by
a few percent at most).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Any

from store.metrics import peak_mem, t95
from store.serving import SERVING_METRICS, cell_value
from store.serving import repeat_value as serving_repeat_value

REPEAT_METRICS = ("tokens_per_s", "latency_s", "ttft_s", "decode_tps", *SERVING_METRICS)
PEAK_MEM_THRESHOLD = 0.05


@dataclass(frozen=True)
class Comparison:
    ratio: float | None  # a / b, from the stored figures
    ci_low: float | None = None
    ci_high: float | None = None
    n_a: int = 0
    n_b: int = 0
    method: str | None = None  # "paired", "welch", "threshold" (peak memory) or None (no interval)
    significant: bool = False
    reason: str = ""


def repeat_value(rep: dict[str, Any], metric: str, batch: int, output_len: int) -> float | None:
    """One repeat's value of `metric`, as store.metrics.summarise computes the cell's over all repeats."""
    lats = [x for x in rep.get("latencies_s") or [] if x is not None]
    latency = statistics.fmean(lats) if lats else None
    counts = [t for t in rep.get("tokens") or [] if isinstance(t, (int, float))]
    seqs = statistics.fmean(counts) / output_len if counts else batch  # a serving pass sends more than `batch`
    if metric == "latency_s":
        return latency
    if metric == "tokens_per_s":
        return seqs * output_len / latency if latency else None
    ttfts = [x for x in rep.get("ttft_s") or [] if x is not None]
    ttft = statistics.median(ttfts) if ttfts else None
    if metric == "ttft_s":
        return ttft
    if metric == "decode_tps":
        if latency is None or ttft is None or output_len <= 1 or latency <= ttft:
            return None
        return seqs * (output_len - 1) / (latency - ttft)
    raise ValueError(f"no per-repeat values for '{metric}' (known: {', '.join(REPEAT_METRICS)})")


def repeat_values(cell: dict[str, Any], metric: str) -> list[tuple[Any, float]]:
    """(round, value) per repeat with a positive value; round is None where the repeat did not record it."""
    out = []
    for rep in cell.get("repeats") or []:
        if metric in SERVING_METRICS:
            v = serving_repeat_value(rep, cell, metric)
        else:
            v = repeat_value(rep, metric, cell["batch"], cell["output_len"])
        if v is not None and v > 0:
            out.append((rep.get("round"), v))
    return out


def point_value(cell: dict[str, Any], metric: str) -> float | None:
    if metric == "peak_mem":
        return peak_mem(cell)
    if metric in SERVING_METRICS:
        return cell_value(cell, metric)
    return cell.get(metric)


def interleaved_pair(run_a: dict[str, Any] | None, run_b: dict[str, Any] | None) -> bool:
    """Both runs of one study, both measured with the interleaved schedule."""
    if not run_a or not run_b or not run_a.get("group_id") or run_a.get("group_id") != run_b.get("group_id"):
        return False
    return all((r.get("runtime") or {}).get("schedule") == "interleaved" for r in (run_a, run_b))


def log_halfwidth(values: list[float]) -> float | None:
    """Half-width of the 95% t interval of the mean of log(values); None with fewer than two."""
    if len(values) < 2:
        return None
    logs = [math.log(v) for v in values]
    return t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))


def _paired_halfwidth(a: list[tuple[Any, float]], b: list[tuple[Any, float]]) -> float | None:
    """Half-width from per-round log differences, or None when the rounds do not pair one to one."""
    rounds_a, rounds_b = [r for r, _ in a], [r for r, _ in b]
    one_to_one = len(set(rounds_a)) == len(rounds_a) == len(rounds_b) == len(set(rounds_b))
    if None in rounds_a or not one_to_one or set(rounds_a) != set(rounds_b):
        return None
    by_b = dict(b)
    return log_halfwidth([va / by_b[r] for r, va in a])  # log(a/b) = log a - log b


def _welch_halfwidth(a: list[float], b: list[float]) -> float:
    la, lb = [math.log(v) for v in a], [math.log(v) for v in b]
    va, vb = statistics.variance(la) / len(la), statistics.variance(lb) / len(lb)
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (len(la) - 1) + vb**2 / (len(lb) - 1))
    return t95(max(df, 1.0)) * se


def compare(a: dict[str, Any], b: dict[str, Any], metric: str, *, run_a: dict[str, Any] | None = None,
            run_b: dict[str, Any] | None = None, floor: float | None = None) -> Comparison:  # fmt: skip
    """The ratio a / b of one grid point's cells, its 95% interval and whether it is significant.

    `run_a`/`run_b` are the runs' rows (group_id, runtime) and decide pairing; `floor` is the host's
    relative noise floor for `metric` (None: not measured).
    """
    pa, pb = point_value(a, metric), point_value(b, metric)
    if not pa or not pb or pa <= 0 or pb <= 0:
        return Comparison(None, reason="no figure to compare")
    point = pa / pb
    if metric == "peak_mem":
        big = abs(math.log(point)) > math.log1p(PEAK_MEM_THRESHOLD)
        return Comparison(point, n_a=1, n_b=1, method="threshold", significant=big,
                          reason=f"one sample per cell: {'beyond' if big else 'within'} ±{PEAK_MEM_THRESHOLD * 100:.0f}%")  # fmt: skip
    va, vb = repeat_values(a, metric), repeat_values(b, metric)
    n_a, n_b = len(va), len(vb)
    if n_a < 2 or n_b < 2:
        why = "no repeats stored" if min(n_a, n_b) == 0 else "one repeat: no interval"
        return Comparison(point, n_a=n_a, n_b=n_b, reason=why)
    half = _paired_halfwidth(va, vb) if interleaved_pair(run_a, run_b) else None
    method = "paired"
    if half is None:
        half, method = _welch_halfwidth([v for _, v in va], [v for _, v in vb]), "welch"
    half = min(half, 700.0)  # exp's range; an interval that wide says nothing anyway
    # point * exp(+-h) rather than exp(log(point) +- h): the point then lies inside to the last bit.
    low, high = point * math.exp(-half), point * math.exp(half)
    c = Comparison(point, low, high, n_a, n_b, method)
    if low <= 1.0 <= high:
        return replace(c, reason="interval contains 1")
    if floor and abs(math.log(point)) <= math.log1p(floor):
        return replace(c, reason=f"within the noise floor ±{floor * 100:.1f}%")
    return replace(c, significant=True,
                   reason="interval excludes 1" + (f" and the noise floor ±{floor * 100:.1f}%" if floor else ""))


def run_comparisons(results: list[Any], baseline: int, metric: str,
                    floors: dict[str, float] | None = None) -> list[dict[tuple, Comparison]]:  # fmt: skip
    """Per run (RunResult-like: .run, .cells, .cell_key), its done cells against the baseline run's, by
    cell key; the baseline's own entry is empty."""
    base = results[baseline]
    base_cells = {base.cell_key(c): c for c in base.cells if c["status"] == "done"}
    floor = (floors or {}).get(metric)
    out: list[dict[tuple, Comparison]] = []
    for i, r in enumerate(results):
        row: dict[tuple, Comparison] = {}
        if i != baseline:
            for c in r.cells:
                b = base_cells.get(r.cell_key(c))
                if b is not None and c["status"] == "done":
                    row[r.cell_key(c)] = compare(c, b, metric, run_a=r.run, run_b=base.run, floor=floor)
        out.append(row)
    return out


def ratio_text(c: Comparison) -> str:
    """`1.52× (1.31–1.76)`; not significant: `≈1.04× (0.91–1.19)`; no interval: `≈1.04×`."""
    if c.ratio is None:
        return "-"
    text = ("" if c.significant else "≈") + f"{_x(c.ratio)}×"
    if c.ci_low is not None and c.ci_high is not None:
        text += f" ({_x(c.ci_low)}–{_x(c.ci_high)})"
    return text


def _x(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
