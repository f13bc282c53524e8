"""Serving load: request-rate and ISL/OSL axes, arrival times, SLOs and goodput.

Standard library only: the CLI, the dashboard and the store read it. Definitions follow vLLM's `bench serve`
where it has one: arrivals are gamma-distributed gaps with shape `burstiness` and mean 1/rate (Poisson at
burstiness 1), the first request is sent at once, and rate inf sends every request at once. SLOs, attainment
and goodput are computed in store/serving.py (the store recomputes them from the stored requests).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Any, Iterator

from engines.base import SpecError
from store.serving import SLO_METRICS

INF = math.inf
MAX_RATE = 1e6  # requests/s: beyond this no server keeps up and a gap is below a clock tick
MAX_REQUESTS = 100_000  # per pass: every request's timings are stored
MAX_PASS_S = 3600.0  # --duration: an hour per pass, and a cell runs warmup + iters x repeats passes
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|ms|s|m)?\s*$")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}


def _shown(text: Any) -> str:
    r = repr(text)
    return r if len(r) <= 42 else r[:40] + "…"


def parse_rates(spec: Any) -> list[float]:
    """'1,2,4,inf' (or a list) -> sorted unique requests/s; inf sends a cell's requests all at once."""
    items = spec if isinstance(spec, list) else str(spec).split(",")
    rates: list[float] = []
    for item in items:
        if isinstance(item, bool):
            item = str(item)
        text = str(item).strip().lower()
        try:
            rate = INF if text in ("inf", "infinity") else float(text)
        except ValueError:
            raise SpecError(f"--request-rate: {_shown(item)} is not a number of requests/s; use e.g. 1,2,4,inf") from None
        if not (0 < rate <= MAX_RATE or rate == INF):
            raise SpecError(f"--request-rate: {_shown(item)} must be above 0 and at most {MAX_RATE:g} requests/s, "
                            "or inf")  # fmt: skip
        rates.append(rate)
    if not rates:
        raise SpecError("--request-rate: no values; give e.g. 1,2,4,inf")
    return sorted(set(rates))


def rate_text(rate: float) -> str:
    return "inf" if rate == INF else f"{rate:g}"


def stored_rate(rate: Any) -> Any:
    """JSON has no infinity: a stored cell keeps "inf"."""
    return "inf" if rate == INF else rate


def loaded_rate(value: Any) -> float:
    return INF if value == "inf" or value is None else float(value)


def parse_isl_osl(spec: Any) -> list[tuple[int, int]]:
    """'128/128,512/256' (or a list of [isl, osl]) -> (input, output) token pairs, in the given order, each once."""
    from engines.study.grid import MAX_TOKENS

    items = spec if isinstance(spec, list) else str(spec).split(",")
    pairs: list[tuple[int, int]] = []
    for item in items:
        parts = item if isinstance(item, (list, tuple)) else str(item).strip().split("/")
        ok = len(parts) == 2 and all(isinstance(p, int) and not isinstance(p, bool) or
                                     isinstance(p, str) and p.strip().isascii() and p.strip().isdigit() for p in parts)  # fmt: skip
        if not ok:
            raise SpecError(f"--isl-osl: {_shown(item)} is not INPUT/OUTPUT tokens; use e.g. 128/128,512/256")
        isl, osl = (int(p) for p in parts)
        if not (1 <= isl <= MAX_TOKENS and 1 <= osl <= MAX_TOKENS):
            raise SpecError(f"--isl-osl: {_shown(item)} must have both lengths from 1 to {MAX_TOKENS:,}")
        pairs.append((isl, osl))
    if not pairs:
        raise SpecError("--isl-osl: no pairs; give e.g. 128/128,512/256")
    return list(dict.fromkeys(pairs))


def parse_duration(text: Any, what: str, most: float = 86400.0) -> float:
    """'200ms', '5s', '1.5', '2m' -> seconds (a bare number is seconds), above 0 and at most `most`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise SpecError(f"{what}: {_shown(text)} is not a duration; use e.g. 200ms, 5s or 0.05")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not (0 < seconds <= most) or math.isnan(seconds):
        limit = "a day" if most == 86400 else "an hour" if most == 3600 else f"{most:g} s"
        raise SpecError(f"{what}: {_shown(text)} must be above 0 and at most {limit}")
    return seconds


def parse_slo(spec: Any) -> dict[str, float]:
    """'ttft=200ms,itl=50ms,e2e=5s' (or a dict) -> {metric: limit in seconds}."""
    items = list(spec.items()) if isinstance(spec, dict) else [p.partition("=")[::2] for p in str(spec).split(",")]
    slo: dict[str, float] = {}
    for key, value in items:
        key = str(key).strip().lower()
        if key not in SLO_METRICS:
            raise SpecError(f"--slo: unknown metric {_shown(key)} (known: {', '.join(SLO_METRICS)}); "
                            "use e.g. ttft=200ms,itl=50ms,e2e=5s")  # fmt: skip
        if value in ("", None):
            raise SpecError(f"--slo: {key} needs a limit, e.g. {key}=200ms")
        slo[key] = parse_duration(value, f"--slo {key}")
    if not slo:
        raise SpecError("--slo: no limits; give e.g. ttft=200ms,itl=50ms,e2e=5s")
    return slo


def slo_text(slo: dict[str, float]) -> str:
    return ",".join(f"{k}={v * 1000:g}ms" for k, v in slo.items())


def arrival_times(rate: float, burstiness: float, seed: int) -> Iterator[float]:
    """Send offsets in seconds from the cell's start, without end: vLLM's gamma gaps (mean 1/rate), the first at 0;
    rate inf sends every request at 0."""
    t = 0.0
    yield t
    if rate == INF:
        while True:
            yield 0.0
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    while True:
        t += rng.gammavariate(burstiness, scale)
        yield t


def arrivals(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """The first n of arrival_times."""
    return list(itertools.islice(arrival_times(rate, burstiness, seed), max(n, 0)))


def prompt_pool(concurrency: int, rate: float, requests: int | None, duration_s: float | None) -> int:
    """Prompts made before a serving cell: its request count, or for a duration what the rate will send in it
    (plus a tenth); a closed loop (rate inf) starts with the concurrency and grows as the pass needs."""
    if requests and not duration_s:
        return requests
    if not duration_s:
        return concurrency
    expected = concurrency if rate == INF else math.ceil(rate * duration_s * 1.1) + concurrency
    return max(1, min(expected, requests or MAX_REQUESTS))


def arrival_seed(workload_seed: int, batch: int, input_len: int, rate: float) -> int:
    """Arrivals depend on the cell's shape, not its position: two runs with one seed send the same requests."""
    return (workload_seed * 1_000_003 + batch * 7919 + input_len * 31 + int(min(rate, MAX_RATE) * 1000)) % 2**63


def load_line(load: dict[str, Any]) -> str:
    """A stored load section in words, for a run's header; what it cannot read is shown as it was stored."""

    def num(v: Any) -> str:
        return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    rates = load.get("request_rate")
    burst = load.get("burstiness", 1.0)
    parts = [f"{','.join(num(r) for r in rates)} req/s" if isinstance(rates, list) and rates else "all at once"]
    if rates:
        parts[0] += " (Poisson)" if burst in (None, 1, 1.0) else f" (gamma, burstiness {num(burst)})"
    requests, duration = load.get("requests"), load.get("duration_s")
    per_pass = " or ".join(x for x in (f"{num(requests)} requests" if requests else "",
                                       f"{num(duration)} s" if duration else "") if x)  # fmt: skip
    parts.append(f"{per_pass or 'as many requests as users'} per pass" + (", whichever first" if requests and duration else ""))
    slo = load.get("slo")
    if isinstance(slo, dict) and slo:
        limits = ",".join(f"{k}={num(v * 1000) if isinstance(v, (int, float)) else v}ms" for k, v in slo.items())
        parts.append(f"SLO {limits} at >= {num(load.get('attainment', 0.99))}")
    if load.get("search"):
        parts.append(f"search {load['search']} over {load.get('search_axis') or 'concurrency'}")
    return "; ".join(parts)
