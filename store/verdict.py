"""The verdict: which stored configuration to run, under the user's constraints, with its evidence.

Each run is one configuration. At the workload point the user cares about (`at`), or at every point of the grid,
a configuration is kept only if its cell there finished, fits `max_mem`, meets every quality bound and the SLO;
each exclusion is one line that says why. What was never measured is named with the command that measures it,
and such a configuration is listed apart, not ranked. The kept ones are ranked by the objective; the leader is
the winner only where the difference to the next is significant (store.significance), else they tie and the
line says so. The Pareto frontier is taken over the objective, the peak memory and every quality bound.

No engines, no UI: the memory model's prediction for a point outside the measured grid comes in as a callable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from store.export import host_line
from store.metrics import peak_mem
from store.results import RunResult, run_title
from store.safe import LINE, NAME, first_line, shown
from store.serving import goodput, serving_metrics
from store.significance import compare
from store.tables import Table, fmt

GIB = 2**30
# objective -> (shown as, higher is better, the metric its significance is judged on)
OBJECTIVES = {"tokens_per_s": ("tok/s", True, "tokens_per_s"),
              "tokens_per_s_per_gib": ("tok/s per GiB", True, "tokens_per_s"),
              "joules_per_token": ("J/token", False, None),
              "goodput": ("goodput req/s", True, "goodput_rps")}  # fmt: skip
AT_KEYS = {"batch": "batch", "input": "input_len", "input_len": "input_len", "output": "output_len",
           "output_len": "output_len", "concurrency": "batch"}  # fmt: skip
_BOUND = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_@.-]{0,40})\s*(>=|<=)\s*([0-9.eE+-]+)\s*$")
# how each quality figure is measured, for the "not measured" lines
MEASURE = {"agreement": "codebench-tui check --engines {engine} --model {model}",
           "perplexity": "codebench-tui eval --metric perplexity --engine {engine} --model {model}",
           "pass@": "codebench-tui eval --metric pass@k --engine {engine} --model {model}"}  # fmt: skip


class VerdictError(ValueError):
    """A constraint that cannot be read: one line naming it and the fix."""


@dataclass(frozen=True)
class Bound:
    metric: str
    op: str  # ">=" or "<="
    value: float

    def holds(self, v: float) -> bool:
        return v >= self.value if self.op == ">=" else v <= self.value

    def text(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_quality(spec: str) -> list[Bound]:
    """'agreement>=0.99,pass@1>=0.3,perplexity<=12' -> bounds."""
    out = []
    for item in filter(None, (x.strip() for x in str(spec).split(","))):
        m = _BOUND.match(item)
        try:
            value = float(m.group(3)) if m else math.nan
        except ValueError:
            value = math.nan
        if not m or not math.isfinite(value):
            raise VerdictError(f"--min-quality: {item[:40]!r} is not METRIC>=VALUE or METRIC<=VALUE; use e.g. "
                               "agreement>=0.99,pass@1>=0.3")  # fmt: skip
        out.append(Bound(m.group(1), m.group(2), value))
    return out


def parse_at(spec: str) -> dict[str, Any]:
    """'batch=8,input=2048[,output=128][,request_rate=4]' -> {batch: 8, input_len: 2048, ...}; another key is an
    extra axis of the grid (a number, or inf)."""
    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in str(spec).split(","))):
        key, _, value = (p.strip() for p in item.partition("="))
        key = key.lower()
        if key in AT_KEYS and value.isdigit() and 1 <= int(value) <= 10**9:
            out[AT_KEYS[key]] = int(value)
        elif re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", key) and (value == "inf" or re.fullmatch(r"[0-9]+(\.[0-9]+)?", value)):
            out[key] = "inf" if value == "inf" else (int(value) if value.isdigit() else float(value))
        else:
            raise VerdictError(f"--at: {item[:40]!r} is not batch=N, input=N, output=N or AXIS=N; use e.g. "
                               "batch=8,input=2048")  # fmt: skip
    if not out:
        raise VerdictError("--at: no point; use e.g. batch=8,input=2048")
    return out


@dataclass
class Constraints:
    objective: str = "tokens_per_s"
    max_mem: int | None = None  # bytes
    quality: list[Bound] = field(default_factory=list)
    slo: dict[str, float] | None = None  # seconds
    attainment: float = 0.99
    at: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise VerdictError(f"--objective: {str(self.objective)[:40]!r} is not one of {', '.join(OBJECTIVES)}")

    def lines(self) -> list[str]:
        out = [f"objective: {OBJECTIVES[self.objective][0]} ({'higher' if OBJECTIVES[self.objective][1] else 'lower'} is better)"]
        if self.max_mem:
            out.append(f"peak memory at most {gib_text(self.max_mem)} GiB")
        out += [f"quality {b.text()}" for b in self.quality]
        if self.slo:
            limits = ",".join(f"{k}={v * 1000:g}ms" for k, v in self.slo.items())
            out.append(f"SLO {limits} for at least {self.attainment:.0%} of requests")
        return out


@dataclass
class Entry:
    """One configuration at one point."""

    name: str
    result: RunResult
    cell: dict[str, Any] | None
    value: float | None = None
    mem: int | None = None
    quality: dict[str, float] = field(default_factory=dict)
    excluded: str = ""
    missing: list[str] = field(default_factory=list)
    tie: str = ""  # the leader's line when this entry is not significantly different from it
    tied: bool = False


@dataclass
class Verdict:
    constraints: Constraints
    point: dict[str, int] | None
    ranked: list[Entry]
    unverified: list[Entry]
    excluded: list[Entry]
    frontier: list[Entry]
    grid: dict[tuple, list[str]] = field(default_factory=dict)  # whole-grid mode: (batch, in, out, params) -> winners
    wins: dict[str, int] = field(default_factory=dict)
    environment: list[str] = field(default_factory=list)

    def winner_line(self) -> str:
        if not self.ranked:
            return "no configuration meets every constraint" + (" with its evidence measured" if self.unverified else "")
        lead = [e.name for e in self.ranked if e is self.ranked[0] or e.tied]
        if len(lead) == 1:
            return f"winner: {lead[0]}"
        return f"tie: {' ≈ '.join(lead)} (no significant difference)"


AXES = ("batch", "input_len", "output_len")


def gib_text(n: float) -> str:
    g = n / GIB
    return f"{g:.3g}" if g < 1000 else f"{g:,.0f}"


def _point_text(point: dict[str, Any]) -> str:
    return " × ".join(f"{k.removesuffix('_len')} {v}" if k in AXES else f"{k}={v}" for k, v in point.items())


def _matches(cell: dict[str, Any], point: dict[str, Any]) -> bool:
    params = cell.get("params") or {}
    return all((cell.get(k) if k in AXES else params.get(k)) == v for k, v in point.items())


def _measured(result: RunResult) -> str:
    def span(key: str) -> str:
        vals = sorted({c[key] for c in result.cells})
        return f"{key.removesuffix('_len')} {vals[0]}–{vals[-1]}" if len(vals) > 1 else f"{key.removesuffix('_len')} {vals[0]}"

    return ", ".join(span(k) for k in ("batch", "input_len", "output_len")) if result.cells else "nothing"


def _quality(result: RunResult) -> dict[str, float]:
    """The run's latest figure per quality metric (pass@1, agreement, perplexity, ...)."""
    out: dict[str, float] = {}
    for q in sorted(result.quality, key=lambda q: q.get("created_at") or 0):
        v = q.get("value")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(q.get("metric"))] = float(v)
    return out


def _command(metric: str, result: RunResult) -> str:
    """The command that measures `metric` for this configuration (its precision, attention and quant too)."""
    engine, model = shown(result.run.get("engine") or "?", NAME), shown(result.run.get("model") or "?", NAME)
    cfg = result.run.get("config") or {}
    flags = {"precision": cfg.get("precision"), "quant": cfg.get("quant")}
    if not metric.startswith("agreement"):  # check has no --attention
        flags["attention"] = cfg.get("attention")
    extra = "".join(f" --{k} {shown(v, NAME)}" for k, v in flags.items() if v and v != "none")
    for prefix, cmd in MEASURE.items():
        if metric == prefix or metric.startswith(prefix) and prefix.endswith("@"):
            return cmd.format(engine=engine, model=model) + extra
    return f"the tool that measures {metric}"


def _held_beside(cell: dict[str, Any]) -> str:
    """An OOM while the interleaved runs beside it held memory on the same device may not be this configuration's:
    say how much they held and whether the memory model has it fit alone (engines/harness/memplan.py stored it)."""
    mem = (cell.get("metrics") or {}).get("memory")
    if not isinstance(mem, dict):
        return ""
    held, need, cap = mem.get("held_beside_bytes"), mem.get("predicted_bytes"), mem.get("capacity_bytes")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in (held, need, cap)):
        return ""
    block = mem.get("largest_block") if mem.get("basis") == "gpu" and isinstance(mem.get("largest_block"), int) else 0
    alone = need + block <= cap + held  # type: ignore[operator]
    return (f", with {gib_text(held)} GiB held beside it by the interleaved runs; the memory model predicts "  # type: ignore[arg-type]
            f"{gib_text(need)} GiB" + (": it may fit alone (--schedule sequential)" if alone else ""))  # type: ignore[arg-type]


def _requests(cell: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for rep in cell.get("repeats") or [] for e in rep.get("extra") or [] if isinstance(e, dict)
            for r in e.get("requests_log") or [] if isinstance(r, dict)]  # fmt: skip


def _slo_check(e: Entry, c: Constraints) -> None:
    """A serving cell: the stored requests against the SLO; an in-process cell: its batch's TTFT, time per output
    token per sequence and latency against the same limits."""
    assert c.slo and e.cell is not None
    records = _requests(e.cell)
    if records:
        wall = sum(ex.get("wall_s") or 0 for rep in e.cell.get("repeats") or [] for ex in rep.get("extra") or []
                   if isinstance(ex, dict))  # fmt: skip
        met = goodput(records, c.slo, wall)["attainment"]["all"]
        if met is not None and met < c.attainment:
            e.excluded = f"SLO met by {met:.1%} of requests < {c.attainment:.0%}"
        return
    cell, batch = e.cell, e.cell["batch"]
    decode = cell.get("decode_tps")
    figures = {"ttft": cell.get("ttft_s"), "e2e": cell.get("latency_s"),
               "tpot": batch / decode if decode else None, "itl": batch / decode if decode else None}  # fmt: skip
    for key, limit in c.slo.items():
        v = figures.get(key)
        if v is None:
            e.missing.append(f"{key.upper()} not measured at this point")
        elif v > limit:
            e.excluded = f"{key.upper()} {v * 1000:,.1f} ms > {limit * 1000:g} ms"
            return


def _objective(e: Entry, c: Constraints) -> None:
    cell = e.cell
    assert cell is not None
    if c.objective == "tokens_per_s":
        e.value = cell.get("tokens_per_s")
    elif c.objective == "tokens_per_s_per_gib":
        tps = cell.get("tokens_per_s")
        e.value = tps / (e.mem / GIB) if tps and e.mem else None
        if not e.mem:
            e.missing.append("peak memory not measured: no tok/s per GiB")
    elif c.objective == "joules_per_token":
        e.value = ((cell.get("metrics") or {}).get("efficiency") or {}).get("j_per_token")
        if e.value is None:
            e.missing.append("energy not measured: J/token needs a GPU with NVML power readings")
    else:
        figures = (cell.get("metrics") or {}).get("serving")
        if not isinstance(figures, dict):
            e.missing.append("goodput not measured: only server engines (openai, serve:*) measure it")
        else:
            if c.slo and _requests(cell):
                figures = serving_metrics([ex for rep in cell.get("repeats") or [] for ex in rep.get("extra") or []],
                                          c.slo)  # fmt: skip
            e.value = (figures.get("goodput") or {}).get("goodput_rps")
            if e.value is None:
                e.missing.append("goodput not measured: give --slo (the stored requests are scored against it)")
    if isinstance(e.value, bool) or not isinstance(e.value, (int, float)) or not math.isfinite(e.value):
        e.value = None


def evaluate(result: RunResult, point: dict[str, int], c: Constraints,
             predict: Callable[[RunResult, dict[str, int]], int | None] | None = None,
             name: str | None = None) -> Entry:  # fmt: skip
    """One configuration at one point: kept (value set), excluded (why), or missing evidence."""
    cells = [x for x in result.cells if _matches(x, point)]
    e = Entry(name or shown(run_title(result), NAME), result, cells[0] if cells else None)
    e.quality = _quality(result)
    where = _point_text(point)
    if e.cell is None:
        e.excluded = f"not measured at {where} (measured: {_measured(result)})"
        predicted = predict(result, point) if predict else None
        if predicted is not None:
            fits = "" if not c.max_mem else (f", within {gib_text(c.max_mem)} GiB" if predicted <= c.max_mem
                                             else f" > {gib_text(c.max_mem)} GiB: it would not fit")  # fmt: skip
            e.excluded += f"; the memory model predicts {gib_text(predicted)} GiB there{fits}"
        return e
    status = e.cell.get("status")
    if status == "oom":
        e.excluded = f"OOM at {where}" + _held_beside(e.cell)
        return e
    if status != "done":
        why = first_line(e.cell.get("error") or "") if e.cell.get("error") else "no result"
        e.excluded = f"{shown(status, NAME)} at {where}: {why}"
        return e
    e.mem = peak_mem(e.cell)
    if c.max_mem:
        if e.mem is None:
            e.missing.append("peak memory not measured")
        elif e.mem > c.max_mem:
            e.excluded = f"peak {gib_text(e.mem)} GiB > {gib_text(c.max_mem)} GiB at {where}"
            return e
    for b in c.quality:
        v = e.quality.get(b.metric)
        if v is None:
            e.missing.append(f"{b.metric} not measured: {_command(b.metric, result)}")
        elif not b.holds(v):
            e.excluded = f"{b.metric} {v:.3g} {'<' if b.op == '>=' else '>'} {b.value:g}"
            return e
    if c.slo:
        _slo_check(e, c)
        if e.excluded:
            return e
    _objective(e, c)
    return e


def _rank(entries: list[Entry], c: Constraints) -> list[Entry]:
    """Best first; an entry not significantly different from the leader is tied with it (the leader's line says so)."""
    label, higher, metric = OBJECTIVES[c.objective]
    ranked = sorted(entries, key=lambda e: -e.value if higher else e.value)  # type: ignore[operator]
    if len(ranked) < 2:
        return ranked
    lead = ranked[0]
    for other in ranked[1:]:
        if metric is None:  # one figure per cell (J/token): no interval to judge a difference by
            continue
        cmp = compare(lead.cell, other.cell, metric, run_a=lead.result.run, run_b=other.result.run)  # type: ignore[arg-type]
        if c.objective == "tokens_per_s_per_gib" and cmp.ratio is not None and lead.mem and other.mem:
            scale = other.mem / lead.mem  # one peak per cell: the tok/s interval, moved by the memory ratio
            low, high = (x * scale if x is not None else None for x in (cmp.ci_low, cmp.ci_high))
            cmp = replace(cmp, ratio=cmp.ratio * scale, ci_low=low, ci_high=high,
                          significant=low is not None and high is not None and not low <= 1 <= high)  # fmt: skip
        if cmp.ratio is not None and not cmp.significant:
            other.tied = True
            ci = f", 95% CI {cmp.ci_low:.2f}–{cmp.ci_high:.2f}" if cmp.ci_low is not None else f", {cmp.reason}"
            lead.tie += ("; " if lead.tie else "") + (f"not significantly {'faster' if higher else 'better'} than "
                                                      f"{other.name} (ratio {cmp.ratio:.2f}{ci})")  # fmt: skip
    return ranked


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def frontier(entries: list[Entry], c: Constraints) -> list[Entry]:
    """Not beaten on the objective, the peak memory and every quality bound at once (entries with all figures)."""
    higher = OBJECTIVES[c.objective][1]

    def axes(e: Entry) -> list[float] | None:
        vals = [e.value if higher else -e.value, -e.mem if e.mem else None]  # type: ignore[operator]
        vals += [(q if b.op == ">=" else -q) if (q := e.quality.get(b.metric)) is not None else None for b in c.quality]
        return None if any(v is None for v in vals) else vals  # type: ignore[return-value]

    pts = [(e, a) for e in entries if e.value is not None and (a := axes(e)) is not None]
    return [e for e, a in pts if not any(_dominates(b, a) for _, b in pts)]


def names_of(results: list[RunResult]) -> list[str]:
    from store.results import varying_config_keys

    keys = varying_config_keys(results)
    names = [shown(run_title(r, keys) if keys else run_title(r), NAME) for r in results]
    if len(set(names)) < len(names):  # same configuration twice: its run id tells them apart
        names = [f"{n} ({r.short_id})" for n, r in zip(names, results)]
    return names


def decide(results: list[RunResult], c: Constraints,
           predict: Callable[[RunResult, dict[str, int]], int | None] | None = None) -> Verdict:  # fmt: skip
    names = names_of(results)
    env = sorted({f"{shown(r.run.get('device') or '?', NAME)}: {shown(host_line(r.run), LINE)}" for r in results})
    if c.at:
        entries = [evaluate(r, c.at, c, predict, n) for r, n in zip(results, names)]
        kept = [e for e in entries if not e.excluded and not e.missing and e.value is not None]
        unverified = [e for e in entries if not e.excluded and e not in kept]
        return Verdict(c, c.at, _rank(kept, c), unverified, [e for e in entries if e.excluded],
                       frontier(kept + unverified, c), environment=env)  # fmt: skip
    return _whole_grid(results, names, c, env)


def _whole_grid(results: list[RunResult], names: list[str], c: Constraints, env: list[str]) -> Verdict:
    """Where each configuration wins: per point of the grid, the winner (or the tie) among the kept ones; a
    configuration's exclusions are gathered per reason."""
    keys = {(x["batch"], x["input_len"], x["output_len"], tuple(sorted((x.get("params") or {}).items(), key=str)))
            for r in results for x in r.cells}  # fmt: skip
    points = sorted(keys, key=lambda k: (k[0], k[1], k[2], str(k[3])))
    grid: dict[tuple, list[str]] = {}
    wins = dict.fromkeys(names, 0)
    why: dict[str, dict[str, list[str]]] = {n: {} for n in names}
    missing: dict[str, set[str]] = {n: set() for n in names}
    for b, i, o, params in points:
        point = {"batch": b, "input_len": i, "output_len": o, **dict(params)}
        entries = [evaluate(r, point, c, None, n) for r, n in zip(results, names)]
        for e in entries:
            if e.excluded and e.cell is not None:  # not measured there is no exclusion of a whole-grid verdict
                reason = e.excluded.split(" at ")[0]
                why[e.name].setdefault(reason, []).append(_point_text(point))
            missing[e.name].update(e.missing)
        ranked = _rank([e for e in entries if not e.excluded and not e.missing and e.value is not None], c)
        if ranked:
            grid[(b, i, o, params)] = [e.name for e in ranked if e is ranked[0] or e.tied]
            for n in grid[(b, i, o, params)]:
                wins[n] += 1
    excluded = []
    for r, n in zip(results, names):
        for reason, where in why[n].items():
            e = Entry(n, r, None, excluded=f"{reason} at {len(where)} point(s): {', '.join(where[:4])}"
                      + (" …" if len(where) > 4 else ""))  # fmt: skip
            excluded.append(e)
    unverified = [Entry(n, r, None, missing=sorted(missing[n])) for r, n in zip(results, names) if missing[n]]
    return Verdict(c, None, [], unverified, excluded, [], grid=grid, wins=wins, environment=env)


# --- as tables: the CLI, the screen and the exports show these ---------------------------------------------------


def ranking_table(v: Verdict) -> Table:
    label, higher, _ = OBJECTIVES[v.constraints.objective]
    qual = [b.metric for b in v.constraints.quality]
    rows, rank = [], 0
    for n, e in enumerate(v.ranked):
        rank = rank if e.tied else n + 1
        rows.append([("=" if e.tied else "") + str(rank), e.name, fmt(e.value), _ci(e), _gib(e.mem),
                     *[fmt(e.quality.get(m)) for m in qual], "yes" if e in v.frontier else "-"])  # fmt: skip
    notes = [f"{e.name}: {e.tie}" for e in v.ranked if e.tie]
    where = f" at {_point_text(v.point)}" if v.point else ""
    return Table(f"verdict{where}: {label}", ["rank", "configuration", label, "±95% CI", "peak GiB", *qual, "frontier"],
                 rows, notes)  # fmt: skip


def _ci(e: Entry) -> str:
    ci = (e.cell or {}).get("latency_ci95")
    lat = (e.cell or {}).get("latency_s")
    return f"±{ci / lat * 100:.1f}%" if isinstance(ci, (int, float)) and lat else "-"


def _gib(b: int | None) -> str:
    return "-" if not b else gib_text(b)


def grid_table(v: Verdict) -> Table:
    """The winner per point: rows input × output, columns batch; a tie shows both (a ≈ b)."""
    batches = sorted({k[0] for k in v.grid})
    shapes = sorted({k[1:] for k in v.grid}, key=lambda s: (s[0], s[1], str(s[2])))

    def shape(i: int, o: int, params: tuple) -> str:
        return " ".join([f"in {i} out {o}"] + [f"{shown(k, NAME)}={shown(p, NAME)}" for k, p in params])

    rows = [[shape(*s)] + [" ≈ ".join(v.grid.get((b, *s), ["-"])) for b in batches] for s in shapes]
    notes = [f"{n}: wins at {k} of {len(v.grid)} point(s)" for n, k in sorted(v.wins.items(), key=lambda kv: -kv[1])]
    return Table(f"where each configuration wins: {OBJECTIVES[v.constraints.objective][0]}",
                 ["shape"] + [f"batch {b}" for b in batches], rows, notes)  # fmt: skip


def reason_lines(v: Verdict) -> list[str]:
    out = [f"{e.name}: {e.excluded}" for e in v.excluded]
    out += [f"{e.name}: not ranked, {m}" for e in v.unverified for m in e.missing]
    return out


def tables(v: Verdict) -> list[Table]:
    return [grid_table(v)] if v.point is None else [ranking_table(v)]


def text_lines(v: Verdict) -> list[str]:
    """Everything but the tables, in order: the constraints, the winner, the exclusions and missing evidence, the
    frontier and the environment it holds for."""
    out = ["constraints: " + "; ".join(v.constraints.lines())]
    if v.point is not None:
        out.append(v.winner_line())
    out += reason_lines(v)
    if v.frontier:
        out.append("Pareto frontier (objective, peak memory, quality): " + ", ".join(e.name for e in v.frontier))
    out += [f"holds for: {line}" for line in v.environment]
    return out


def to_json(v: Verdict) -> dict[str, Any]:
    """The verdict as data (`verdict --format json`)."""
    def entry(e: Entry) -> dict[str, Any]:
        return {"name": e.name, "run_id": e.result.id, "value": e.value, "peak_bytes": e.mem, "quality": e.quality,
                "tied": e.tied, "tie": e.tie, "excluded": e.excluded, "missing": e.missing}  # fmt: skip

    return {"constraints": v.constraints.lines(), "point": v.point, "winner": v.winner_line() if v.point else None,
            "ranked": [entry(e) for e in v.ranked], "unverified": [entry(e) for e in v.unverified],
            "excluded": [entry(e) for e in v.excluded], "frontier": [e.name for e in v.frontier],
            "grid": [{"batch": k[0], "input_len": k[1], "output_len": k[2], "params": dict(k[3]), "winners": w}
                     for k, w in v.grid.items()], "wins": v.wins, "environment": v.environment}  # fmt: skip
