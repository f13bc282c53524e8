"""Tables as plain data (headers + rows of strings), shared by the terminal, Markdown and HTML views."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from store import annotate
from store.metrics import peak_mem, ratio
from store.payload import TPShares
from store.results import CELL_AXES, RunResult, run_title, varying, varying_config_keys
from store.safe import NAME, first_line, shown
from store.serving import SERVING_METRICS
from store.serving import cell_value as serving_value
from store.significance import PEAK_MEM_THRESHOLD, log_halfwidth, ratio_text, repeat_values, run_comparisons
from store.vocabulary import METRICS

STATUS_MARK = {"oom": "OOM", "skipped": "skipped", "crashed": "crashed", "failed": "failed", "cancelled": "cancelled"}
AXIS_LABEL = {"batch": "batch", "input_len": "input", "output_len": "output"}
AXIS_SHORT = {"batch": "b", "input_len": "in", "output_len": "out"}
TITLE, CELL, NOTE = 160, 96, 480  # the most a table's title, a header or cell, a note shows


def status_mark(status: str) -> str:
    return STATUS_MARK.get(status) or shown(status, 16)  # an imported status is data: short, as the known ones


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    # Per row, per column: a status for colouring ("oom", "done", ...); same shape as rows.
    styles: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Every view (terminal, Compare, Markdown, HTML) shows these strings, and most hold stored data.
        self.title = shown(self.title, TITLE)
        self.headers = [shown(h, CELL) for h in self.headers]
        self.rows = [[shown(v, CELL) for v in row] for row in self.rows]
        self.notes = [shown(n, NOTE) for n in self.notes]


def title_of(result: RunResult, keys: list[str] | None = None) -> str:
    """A run's name (or what sets it apart) for a title: shown, cut to a name's width."""
    return shown(run_title(result, keys), NAME)


def titles_of(results: list[RunResult], keys: list[str]) -> list[str]:
    """`title [short id]` per run; the id stays whole however long the title."""
    return [f"{title_of(r, keys) if keys else shown(r.run['label'], NAME)} [{shown(r.short_id)}]" for r in results]


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits - 1, 1)}f}" if abs(value) < 100 else f"{value:.1f}"


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def metric_value(cell: dict[str, Any], metric: str) -> float | None:
    if metric == "peak_mem":
        v = peak_mem(cell)
        return None if v is None else v / 2**20
    if metric in SERVING_METRICS:
        return serving_value(cell, metric)
    return cell.get(metric)


def tps_ci_text(cell: dict[str, Any]) -> str:
    """Half-width of the 95% interval of a cell's tokens/s over its repeats, in percent (t on log values)."""
    half = log_halfwidth([v for _, v in repeat_values(cell, "tokens_per_s")]) if cell["status"] == "done" else None
    return "-" if half is None else f"{math.expm1(half) * 100:.1f}%"


def cell_table(result: RunResult) -> Table:
    headers = ["batch", "input", "output", "status", "tok/s", "latency s", "±95% CI", "flags", "TTFT s",
               "decode tok/s", "× ref", "same tokens", *SERVING_HEADERS, "RSS MB", "GPU MB", "J/tok", "BW %"]  # fmt: skip
    extra_keys = sorted({k for c in result.cells for k in (c.get("params") or {})})
    headers[3:3] = [shown(k, NAME) for k in extra_keys]
    rows, styles = [], []
    for c in result.cells:
        row = [str(c["batch"]), str(c["input_len"]), str(c["output_len"])]
        row += [shown((c.get("params") or {}).get(k, "-"), NAME) for k in extra_keys]
        status = c["status"]
        row.append(status_mark(status))
        gpu = c.get("peak_gpu_bytes") or c.get("peak_nvml_bytes")
        shares = TPShares.read(c.get("metrics"))
        per_gpu = shares.per_gpu() if shares else []
        codes = annotate.flag_codes(c)
        row += [fmt(c.get("tokens_per_s")), fmt(c.get("latency_s")), tps_ci_text(c),
                f"{annotate.FLAG_MARK} {', '.join(codes)}" if codes else "-", fmt(c.get("ttft_s")),
                fmt(c.get("decode_tps")), *spec_columns(c), *serving_columns(c), mb(c.get("peak_rss_bytes")),
                mb(gpu) + (f" ({' + '.join(mb(g) for g in per_gpu)})" if len(per_gpu) > 1 else ""),
                *efficiency_columns(c)]  # fmt: skip
        rows.append(row)
        styles.append([status] * len(row))
    notes = []
    errors = [(c, c["error"]) for c in result.cells if c.get("error") and c["status"] in ("failed", "crashed")]
    for c, err in errors[:5]:
        notes.append(f"b={c['batch']} in={c['input_len']} out={c['output_len']} {shown(c['status'], NAME)}: "
                     f"{first_line(err)}")  # fmt: skip
    throttled = [c for c in result.cells if ((c.get("metrics") or {}).get("efficiency") or {}).get("throttle")]
    if throttled:
        reasons = sorted({t for c in throttled for t in c["metrics"]["efficiency"]["throttle"]})
        notes.append(f"GPU throttled ({', '.join(reasons)}) in {len(throttled)} of {len(result.cells)} cells")
    if any(((c.get("metrics") or {}).get("efficiency") or {}).get("bw_share") for c in result.cells):
        notes.append("BW %: bytes one decode step must read (weights + KV cache) / step time, of the GPU's peak")
    if any(tps_ci_text(c) != "-" for c in result.cells):
        notes.append("±95% CI: half-width of the 95% confidence interval of tok/s from the cell's repeats "
                     "(t interval on log values: tok/s ×/÷ (1 + x))")  # fmt: skip
    if any("client_peak_rss_bytes" in (c.get("metrics") or {}) for c in result.cells):
        notes.append("RSS MB: the server's processes (the load generator's own is in the cell's metrics)")
    notes += annotate.code_lines(list(dict.fromkeys(code for c in result.cells for code in annotate.flag_codes(c))))
    notes += search_lines(result.run)
    notes += annotate.run_note_lines([title_of(result)], [result.run])
    # Columns with nothing in them (GPU memory on a CPU run) only take space.
    keep = [i for i in range(len(headers)) if i < 4 or any(row[i] != "-" for row in rows)]
    headers = [headers[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    styles = [[st[i] for i in keep] for st in styles]
    return Table(title_of(result), headers, rows, notes, styles)


def search_lines(run: dict[str, Any]) -> list[str]:
    """A peak-goodput search's outcome per configuration, and the concurrencies it measured on the way."""
    search = (run.get("runtime") or {}).get("search")
    if not isinstance(search, dict) or not isinstance(search.get("searches"), list):
        return []
    target = search.get("target")
    target = f"{target * 100:g}%" if isinstance(target, (int, float)) else "?"
    axis = "request_rate" if search.get("axis") == "request_rate" else "concurrency"
    lines = []
    for s in search["searches"][:50]:
        if not isinstance(s, dict):
            continue
        keys = ("input_len", "output_len", "concurrency" if axis == "request_rate" else "request_rate")
        where = " ".join(f"{k}={shown(v, NAME)}" for k, v in s.items() if k in keys)
        steps = " ".join(f"{shown(p.get(axis), NAME)}{'✓' if p.get('met') else '✗'}" for p in s.get("path") or []
                         if isinstance(p, dict))  # fmt: skip
        peak = s.get(f"peak_{axis}")
        found = "none meets it" if peak is None else f"{peak}" + ("" if s.get("bounded") else " (the largest tried)")
        good = f", goodput {fmt(s.get('goodput_rps'))} req/s" if peak is not None else ""
        what = "request rate" if axis == "request_rate" else "concurrency"
        lines.append(f"peak {what} at ≥{target} SLO attainment, {where}: {shown(found, NAME)}{good}; "
                     f"measured {steps}")  # fmt: skip
    return lines


SERVING_HEADERS = ["requests ok/sent", "TTFT p50/p99 ms", "ITL p50/p99 ms", "SLO met", "goodput req/s"]


def serving_columns(cell: dict[str, Any]) -> list[str]:
    """A serving cell's requests, latency percentiles over every request, and with an SLO its attainment and
    goodput (store/serving.py)."""
    s = (cell.get("metrics") or {}).get("serving")
    if not isinstance(s, dict):
        return ["-"] * len(SERVING_HEADERS)

    def ms(figures: Any) -> str:
        f = figures if isinstance(figures, dict) else {}
        return "/".join("-" if not isinstance(f.get(p), (int, float)) else fmt(f[p] * 1000) for p in ("p50", "p99"))

    good = s.get("goodput") if isinstance(s.get("goodput"), dict) else {}
    met = (good.get("attainment") or {}).get("all") if good else None
    sent, failed = s.get("requests"), s.get("failed")
    ok = sent - failed if isinstance(sent, int) and isinstance(failed, int) else None
    return [f"{ok}/{sent}" if ok is not None else "-", ms(s.get("ttft_s")), ms(s.get("itl_s")),
            "-" if not isinstance(met, (int, float)) else f"{met * 100:.1f}%", fmt(good.get("goodput_rps"))]


def efficiency_columns(cell: dict[str, Any]) -> list[str]:
    """Joules per generated token and the decode roofline share (engines put them in metrics.efficiency)."""
    eff = (cell.get("metrics") or {}).get("efficiency") or {}
    share = eff.get("bw_share")
    return [fmt(eff.get("j_per_token")), "-" if share is None else f"{share * 100:.0f}%"]


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def spec_columns(cell: dict[str, Any]) -> list[str]:
    """Speed-up and token identity against the cell's reference run (speculative, shared-prefix engines)."""
    ref = (cell.get("metrics") or {}).get("reference") or {}
    speedup = ref.get("speedup")
    return ["-" if speedup is None else f"{speedup:.2f}×", {True: "yes", False: "NO"}.get(ref.get("identical"), "-")]


def content_type(result: RunResult) -> str:
    return ((result.run.get("spec") or {}).get("workload") or {}).get("content") or "code (stdlib source)"


def speculative_table(results: list[RunResult]) -> Table:
    """Seed 004's figures per cell: tokens/s, speed-up over the matched run, acceptance, time per token by phase."""
    headers = ["spec", "workload", "b", "in", "out", "tok/s", "speed-up", "accept", "acc len", "tok/step",
               "draft ms/tok", "verify ms/tok", "other ms/tok", "same tokens"]  # fmt: skip
    rows, styles, notes = [], [], []
    for r in results:
        spec = (r.run.get("config") or {}).get("spec")
        for c in r.cells:
            m = c.get("metrics") or {}
            sp, ref, bd = m.get("speculative") or {}, m.get("reference") or {}, m.get("breakdown") or {}
            if c["status"] != "done" or not (sp or bd):
                continue
            same = {True: "yes", False: "NO"}.get(ref.get("identical"), "-")
            speedup = ref.get("speedup")
            rows.append([shown(spec or r.run["label"], NAME), shown(content_type(r), NAME), str(c["batch"]),
                         str(c["input_len"]), str(c["output_len"]), fmt(c.get("tokens_per_s")), "-" if speedup is None else f"{speedup:.2f}×", pct(sp.get("acceptance_rate")),
                         fmt(sp.get("mean_accepted_len")), fmt(sp.get("tokens_per_step")),
                         fmt(bd.get("draft_ms_per_token")), fmt(bd.get("verify_ms_per_token")),
                         fmt(bd.get("other_ms_per_token")), same])  # fmt: skip
            good = speedup is not None and speedup > 1.005
            styles.append(["done"] * 6 + ["better" if good else ("worse" if speedup else "done")] + ["done"] * 6
                          + ["failed" if same == "NO" else "done"])  # fmt: skip
            if sp.get("sequential") and c["batch"] > 1 and not any("one sequence" in n for n in notes):
                notes.append("HF assisted decoding runs one sequence at a time; its matched run batches them")
    notes.append("speed-up: over the matched run without speculation; same tokens: greedy output identical to it")
    title = "speculative decoding"
    if len({row[1] for row in rows}) == 1:  # one content type: say it once
        title += f" on {rows[0][1]}"
        headers.pop(1)
        rows = [row[:1] + row[2:] for row in rows]
        styles = [st[:1] + st[2:] for st in styles]
    return Table(title, headers, rows, notes, styles)


def comparison_table(results: list[RunResult], baseline: int = 0, metric: str = "tokens_per_s",
                     floors: dict[str, float] | None = None, floor_note: str = "") -> Table:  # fmt: skip
    """Rows are grid cells, columns are runs, with ratios against the baseline run and their 95% intervals.

    `floors`: the host's relative noise floor per metric (store.noise.floors_for); `floor_note` says where
    they come from. Ratios are coloured better/worse only when significant (store.significance).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")
    label, higher_better = METRICS[metric]
    keys = varying_config_keys(results)
    titles = titles_of(results, keys)
    names = [title_of(r, keys) for r in results] if keys else titles  # short, for the notes
    names = names if len(set(names)) == len(names) else titles
    all_keys = sorted({r.cell_key(c) for r in results for c in r.cells})
    axes = [i for i, ax in enumerate(CELL_AXES) if varying([k[i] for k in all_keys])] or [0]
    headers = [AXIS_LABEL[CELL_AXES[i]] for i in axes]
    params = sorted({name for k in all_keys for name, _ in k[3]})
    params = [p for p in params if varying([dict(k[3]).get(p) for k in all_keys])]
    headers += [shown(p, NAME) for p in params]
    if varying([content_type(r) for r in results]):
        titles = [f"{t} [{shown(content_type(r), NAME)}]" for t, r in zip(titles, results)]
    for i, t in enumerate(titles):
        headers.append(f"{t} {label}")
        if i != baseline:
            headers.append("× base" if metric == "peak_mem" else "× base (95% CI)")  # one sample: no interval
    by_run = [{r.cell_key(c): c for c in r.cells} for r in results]
    verdicts = run_comparisons(results, baseline, metric, floors)
    rows, styles, flagged = [], [], []
    for key in all_keys:
        row = [str(key[i]) for i in axes] + [shown(dict(key[3]).get(p, "-"), NAME) for p in params]
        where = " ".join(f"{AXIS_SHORT[CELL_AXES[i]]}={key[i]}" for i in axes)
        where += "".join(f" {p}={dict(key[3]).get(p, '-')}" for p in params)
        style = ["done"] * len(row)
        for i, cells in enumerate(by_run):
            cell = cells.get(key)
            if cell is None:
                row.append("-")
                style.append("missing")
            elif cell["status"] != "done":
                row.append(status_mark(cell["status"]))
                style.append(cell["status"])
            else:
                mark = f" {annotate.FLAG_MARK}" if annotate.cell_flags(cell) else ""
                row.append(fmt(metric_value(cell, metric)) + mark)
                style.append("done")
                if mark:
                    flagged.append((f"{names[i]} {where}", cell))
            if i != baseline:
                v = verdicts[i].get(key)
                row.append("-" if v is None else ratio_text(v))
                if v is None or v.ratio is None:
                    style.append("done")
                elif not v.significant:
                    style.append("same")
                else:
                    style.append("better" if (v.ratio > 1) == higher_better else "worse")
        rows.append(row)
        styles.append(style)
    constant = [f"{AXIS_LABEL[ax]}={all_keys[0][i]}" for i, ax in enumerate(CELL_AXES) if i not in axes and all_keys]
    constant += [f"{name}={v}" for name, v in (all_keys[0][3] if all_keys else ()) if name not in params]
    common = [k for k in ("engine", "precision", "attention", "quant") if k not in keys]
    shared = [str(results[0].config_value(k)) for k in common if results[0].config_value(k) not in (None, "none")]
    notes = [f"baseline: {titles[baseline]}; ratio = run / baseline ({'higher' if higher_better else 'lower'} is better)"]
    memory = metric == "peak_mem"
    notes += [annotate.summary_line(titles[i], verdicts[i], higher_better, memory)
              for i in range(len(results)) if i != baseline]  # fmt: skip
    notes.append(_interval_note(verdicts, memory))
    if floor_note:
        notes.append(floor_note)
    if constant or shared:
        notes.append("all runs: " + " ".join(shared + constant))
    notes += annotate.run_note_lines(titles, [r.run for r in results])
    notes += annotate.env_lines(results)
    notes += annotate.flag_lines(flagged)
    notes += annotate.code_lines(list(dict.fromkeys(code for _, c in flagged for code in annotate.flag_codes(c))))
    return Table(f"{label} by cell", headers, rows, notes, styles)


def _interval_note(verdicts: list[dict], memory: bool) -> str:
    if memory:
        return ("peak memory has one sample per cell: no interval; ≈ marks a change within "
                f"±{PEAK_MEM_THRESHOLD * 100:.0f}%")
    methods = {v.method for row in verdicts for v in row.values() if v.ratio is not None}
    how = {"paired": "paired t on log ratios per round (interleaved runs of one study)",
           "welch": "Welch t on log values"}  # fmt: skip
    text = "(95% CI) of a ratio: " + (" or ".join(how[m] for m in ("paired", "welch") if m in methods) or "none")
    text += "; ≈: not significant (the interval contains 1, or the change is within the noise floor)"
    if None in methods:
        text += "; no interval: one repeat on a side"
    return text


def quality_table(results: list[RunResult], baseline: int = 0) -> Table:
    """Rows are quality metrics, columns are runs (seed 001's evaluation table)."""
    keys = varying_config_keys(results)
    titles = titles_of(results, keys)
    metrics = list(dict.fromkeys(q["metric"] for r in results for q in r.quality))
    headers = ["metric"]
    for i, t in enumerate(titles):
        headers.append(t)
        if i != baseline and len(results) > 1:
            headers.append("× base")
    rows, styles, notes = [], [], []
    for m in metrics:
        latest = [next((q for q in reversed(r.quality) if q["metric"] == m), None) for r in results]
        base = latest[baseline]["value"] if latest[baseline] else None
        row, style = [m], ["done"]
        for i, q in enumerate(latest):
            if q is None:
                row.append("-")
                style.append("missing")
            elif q["value"] is None:
                row.append("n/a")
                style.append("failed")
                error = (q["details"] or {}).get("error", "not available")
                notes.append(f"{titles[i]} {shown(m, NAME)}: {first_line(error)}")
            else:
                row.append(f"{q['value']:.4g}")
                style.append("done")
            if i != baseline and len(results) > 1:
                r = ratio(q["value"] if q else None, base)
                row.append("-" if r is None else f"{r:.2f}×")
                style.append("done")  # one measurement each: no interval to call a difference with
        rows.append(row)
        styles.append(style)
    if len(results) > 1 and rows:
        notes.append("quality ratios are single measurements without an interval: shown, not judged "
                     "(perplexity: lower is better; pass@k and agreement: higher)")  # fmt: skip
    return Table("quality", headers, rows, notes, styles)
