"""A stored serving cell's Requests events, rebuilt for a replay from every request's stored timings.

The worker sends Live a Requests event about every 0.5 s of a pass (engines/adapters/openai/engine.py); they
are not stored, but each pass's requests_log is: send offset, E2E, TTFT and every chunk gap. So a replay shows
the same in-flight, done and failed counts and TTFT/ITL strip. Stored values are data: anything that is not a
number is skipped, and an absurd pass length cannot make more than MAX_TICKS events.
"""

from __future__ import annotations

from typing import Any

from engines.study import events as ev

EVERY_S = 0.5
MAX_TICKS = 2000  # per pass


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e12 else None  # finite, and a date


def _requests(log: list) -> list[tuple[float, float, bool, float | None, list[float]]]:
    out = []
    for r in log:
        send = _num(r.get("send")) if isinstance(r, dict) else None
        if send is None:
            continue
        itl = r.get("itl") if isinstance(r.get("itl"), list) else []
        out.append((send, send + (_num(r.get("e2e")) or 0.0), r.get("ok") is True, _num(r.get("ttft")),
                    [g for g in map(_num, itl) if g is not None]))  # fmt: skip
    return out


def request_events(run_id: str, cell: dict[str, Any]) -> list[ev.Requests]:
    out: list[ev.Requests] = []
    for rep in cell.get("repeats") or []:
        start = _num(rep.get("t0")) if isinstance(rep, dict) else None
        extras, lats = rep.get("extra") if start is not None else None, rep.get("latencies_s") or []
        for k, extra in enumerate(extras if isinstance(extras, list) else []):
            log = extra.get("requests_log") if isinstance(extra, dict) else None
            if not isinstance(log, list) or not log:
                continue
            begin = start + sum(x for x in map(_num, lats[:k]) if x is not None)
            reqs = _requests(log)
            wall = max([_num(extra.get("wall_s")) or 0.0] + [end for _, end, *_ in reqs])
            every = max(EVERY_S, wall / MAX_TICKS)
            total = 0 if extra.get("duration_s") else len(log)
            before, t = -1.0, 0.0
            while True:
                t = min(t + every, wall)
                fresh = [r for r in reqs if before < r[1] <= t and r[2]]
                out.append(ev.Requests(run_id, begin + t, index=cell.get("idx", 0),
                                       in_flight=sum(1 for s, e, *_ in reqs if s <= t < e),
                                       done=sum(1 for r in reqs if r[1] <= t and r[2]),
                                       failed=sum(1 for r in reqs if r[1] <= t and not r[2]), total=total,
                                       ttft_ms=[r[3] * 1000 for r in fresh if r[3] is not None][-ev.REQUEST_SAMPLES:],
                                       itl_ms=[g * 1000 for r in fresh for g in r[4]][-ev.REQUEST_SAMPLES:]))  # fmt: skip
                if t >= wall:
                    break
                before = t
    return out
