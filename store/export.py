"""Exporters (CSV, Markdown, JSON, HTML) from one result schema, and the JSON importer."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from typing import Any

from sqlmodel import Session

from store.annotate import cell_flags
from store.boundary import boundary_tables
from store.import_schema import EXPORT_TAG
from store.importdoc import CheckedExport, ImportError_, check, parse_export, read_export  # noqa: F401 (the importer's API)
from store.models import SCHEMA_VERSION, CellRow, Quality, Run, RunGroup, Telemetry
from store.payload import TPShares
from store.results import RunResult
from store.safe import LINE, NAME, shown
from store.significance import REPEAT_METRICS, Comparison, run_comparisons
from store.tables import Table, cell_table, comparison_table, quality_table
from store.vocabulary import FORMATS
from store.workload_tables import workload_columns, workload_tables

CSV_COLUMNS = ["run_id", "run_name", "label", "model", "engine", "precision", "attention", "quant", "options",
               "device", "batch", "input_len", "output_len", "params", "status", "tokens_per_s", "latency_s",
               "latency_spread", "latency_ci95", "ttft_s", "decode_tps", "peak_rss_bytes", "peak_gpu_bytes",
               "peak_nvml_bytes", "peak_bytes_per_rank", "repeats", "error",
               # tokens/s against the baseline run (store.significance), empty on the baseline's rows
               "baseline_run_id", "ratio", "ratio_ci_low", "ratio_ci_high", "significant", "ratio_method",
               "ratio_reason", "flags",
               # scored workloads (store.workload_tables): needle retrieval, fill-in-the-middle
               "needle_accuracy", "fim_exact_match", "fim_edit_similarity"]  # fmt: skip


def when(ts: float | None) -> str:
    return "-" if not ts else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: float | None) -> str | float:
    return "" if v is None else v


def _ratio_columns(base_id: str, v: Comparison | None) -> list[Any]:
    if v is None or v.ratio is None:
        return ["", "", "", "", "", "", ""]
    return [base_id, v.ratio, _num(v.ci_low), _num(v.ci_high), "true" if v.significant else "false",
            v.method or "", v.reason]  # fmt: skip


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _per_rank(cell: dict[str, Any]) -> list[int | None]:
    shares = TPShares.read(cell.get("metrics"))
    return shares.peak_bytes_per_rank if shares else []


def csv_safe(value: Any) -> Any:
    """A spreadsheet runs a text cell that starts like a formula: text gets a leading ', numbers stay numbers."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def to_csv(results: list[RunResult], baseline: int = 0, floors: dict[str, float] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    verdicts = run_comparisons(results, baseline, "tokens_per_s", floors) if results else []
    for n, r in enumerate(results):
        cfg = r.run.get("config") or {}
        for c in r.cells:
            w.writerow(csv_safe(v) for v in [
                r.id, r.run.get("name") or "", r.run["label"], r.run["model"], cfg.get("engine"),
                cfg.get("precision") or "", cfg.get("attention") or "", cfg.get("quant") or "",
                json.dumps(cfg.get("options") or {}, sort_keys=True), r.run.get("device") or "",
                c["batch"], c["input_len"], c["output_len"], json.dumps(c.get("params") or {}, sort_keys=True),
                c["status"], *("" if c.get(k) is None else c[k] for k in
                               ("tokens_per_s", "latency_s", "latency_spread", "latency_ci95", "ttft_s", "decode_tps",
                                "peak_rss_bytes", "peak_gpu_bytes", "peak_nvml_bytes")),
                json.dumps(_per_rank(c)),
                len(c.get("repeats") or []), (c.get("error") or "").splitlines()[0] if c.get("error") else "",
                *_ratio_columns(results[baseline].id, verdicts[n].get(r.cell_key(c))),
                "; ".join(f"{f.get('code', '?')}: {f.get('reason', '')}" for f in cell_flags(c)),
                *workload_columns(c),
            ])  # fmt: skip
    return buf.getvalue()


def md_escape(text: str) -> str:
    """Names, labels and reasons are the user's: keep them from closing a cell or the italics, or adding HTML."""
    for ch in ("\\", "|", "*", "_", "`"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(t: Table) -> str:
    """A Table as a GitHub Markdown table: bold title, centred columns, notes in italics."""
    esc = md_escape
    lines = [f"**{esc(t.title)}**", "", "| " + " | ".join(map(esc, t.headers)) + " |",
             "|" + "|".join(":---:" for _ in t.headers) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in t.rows]
    lines += [""] + [f"_{esc(n)}_  " for n in t.notes]
    return "\n".join(lines).rstrip() + "\n"


def host_line(run: dict[str, Any]) -> str:
    h = run.get("host") or {}
    gpus = ", ".join(g.get("name") or "?" for g in h.get("gpus") or []) or "no GPU"
    return f"{h.get('cpu', '?')} ({h.get('cpu_logical', '?')} threads), {gpus}, Python {h.get('python', '?')}"


def run_settings(r: RunResult) -> list[str]:
    """What the study chose that moves figures, and the runner's notes: each export says them with the run."""
    rt, spec = r.run.get("runtime") or {}, r.run.get("spec") or {}
    out = [f"{shown(rt['schedule'], NAME)} schedule"] if isinstance(rt, dict) and rt.get("schedule") else []
    env = spec.get("worker_env") if isinstance(spec, dict) else None
    if isinstance(env, dict) and env:
        out.append("worker env set by the study: " + shown(" ".join(f"{k}={v}" for k, v in env.items()), LINE))
    out += [f"note: {shown(n, LINE)}" for n in r.run.get("notes") or [] if isinstance(n, str)]
    return out


def to_markdown(results: list[RunResult], baseline: int = 0, metric: str = "tokens_per_s",
                floors: dict[str, float] | None = None, floor_note: str = "") -> str:  # fmt: skip
    out = ["# codebench-tui results", ""]
    for r in results:
        out.append(f"- `{md_escape(shown(r.short_id, NAME))}` **{md_escape(shown(r.run['label'], NAME))}** on "
                   f"{md_escape(shown(r.run['model'], NAME))} ({md_escape(shown(r.run.get('device') or '?', NAME))}), "
                   f"{md_escape(shown(r.status, NAME))}, {when(r.run.get('created_at'))}: "
                   f"{md_escape(shown(host_line(r.run), LINE))}"
                   + "".join(f"; {md_escape(x)}" for x in run_settings(r)))  # fmt: skip
    out.append("")
    if len(results) > 1:
        out += [markdown_table(comparison_table(results, baseline, metric, floors, floor_note)), ""]
    if any(r.quality for r in results):
        out += [markdown_table(quality_table(results, baseline)), ""]
    for r in results:
        out += [markdown_table(cell_table(r)), ""]
    for r in results:  # memory boundaries, where the cells carry predictions (store.boundary)
        out += [x for t in boundary_tables(r) for x in (markdown_table(t), "")]
    for r in results:  # needle heat map, FIM scores (store.workload_tables)
        out += [x for t in workload_tables(r) for x in (markdown_table(t), "")]
    out += [x for t in pareto_tables(results) for x in (markdown_table(t), "")]
    return "\n".join(out).rstrip() + "\n"


def pareto_tables(results: list[RunResult]) -> list[Table]:
    """Serving runs' Pareto frontiers (store/pareto.py): throughput, and goodput where an SLO was set."""
    from store.pareto import pareto_table

    if not any(isinstance((c.get("metrics") or {}).get("serving"), dict) for r in results for c in r.cells):
        return []
    return [t for t in (pareto_table(results), pareto_table(results, goodput=True)) if t is not None]


def _esc(value: Any) -> str:
    """Every value the HTML export interpolates is text, never markup (quotes too: some sit in attributes)."""
    return html.escape(str(value), quote=True)


def _html_table(t: Table) -> str:
    e = _esc
    head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
    body = []
    for row, styles in zip(t.rows, t.styles or [[""] * len(t.headers)] * len(t.rows)):
        tds = "".join(f'<td class="{e(s)}">{e(v)}</td>' for v, s in zip(row, styles))
        body.append(f"<tr>{tds}</tr>")
    notes = "".join(f"<p class=note>{e(n)}</p>" for n in t.notes)
    return f"<h2>{e(t.title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{notes}"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
.oom,.crashed,.failed{color:#b00020;font-weight:bold}.skipped,.cancelled,.missing{color:#888}
.better{color:#0a7a28}.worse{color:#b35c00}.same{color:#999}.note{color:#555;font-size:.9em}"""


def to_html(results: list[RunResult], baseline: int = 0, metric: str = "tokens_per_s",
            floors: dict[str, float] | None = None, floor_note: str = "") -> str:  # fmt: skip
    e = _esc
    items = "".join(
        f"<li><code>{e(shown(r.short_id, NAME))}</code> <b>{e(shown(r.run['label'], NAME))}</b> on "
        f"<code>{e(shown(r.run['model'], NAME))}</code> ({e(shown(r.run.get('device') or '?', NAME))}), "
        f"{e(shown(r.status, NAME))}, {e(when(r.run.get('created_at')))}: {e(shown(host_line(r.run), LINE))}"
        + "".join(f"; {e(x)}" for x in run_settings(r)) + "</li>"
        for r in results
    )
    tables = [comparison_table(results, baseline, metric, floors, floor_note)] if len(results) > 1 else []
    tables += [quality_table(results, baseline)] if any(r.quality for r in results) else []
    tables += [cell_table(r) for r in results]
    tables += [t for r in results for t in boundary_tables(r)]
    tables += [t for r in results for t in workload_tables(r)]
    tables += pareto_tables(results)
    body = "".join(_html_table(t) for t in tables)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>codebench-tui results</title><style>{_CSS}</style>"
            f"</head><body><h1>codebench-tui results</h1><ul>{items}</ul>{body}</body></html>\n")  # fmt: skip


def comparison_section(results: list[RunResult], baseline: int, floors: dict[str, float] | None,
                       floor_note: str) -> dict[str, Any]:  # fmt: skip
    """Every run's cells against the baseline, per metric with repeats: derived data, which import ignores."""
    cells = []
    for metric in REPEAT_METRICS:
        for r, verdicts in zip(results, run_comparisons(results, baseline, metric, floors)):
            for c in r.cells:
                v = verdicts.get(r.cell_key(c))
                if v is not None and v.ratio is not None:
                    cells.append({"run_id": r.id, "batch": c["batch"], "input_len": c["input_len"],
                                  "output_len": c["output_len"], "params": c.get("params") or {}, "metric": metric,
                                  "ratio": v.ratio, "ratio_ci_low": v.ci_low, "ratio_ci_high": v.ci_high,
                                  "significant": v.significant, "method": v.method, "reason": v.reason,
                                  "n": v.n_a, "n_baseline": v.n_b})  # fmt: skip
    notes = comparison_table(results, baseline, "tokens_per_s", floors, floor_note).notes
    return {"baseline_run_id": results[baseline].id, "floors": floors or {}, "floor_note": floor_note,
            "notes": notes, "cells": cells}  # fmt: skip


def to_json(results: list[RunResult], groups: list[dict[str, Any]], baseline: int = 0,
            floors: dict[str, float] | None = None, floor_note: str = "") -> str:  # fmt: skip
    doc: dict[str, Any] = {
        "format": EXPORT_TAG,
        "schema_version": SCHEMA_VERSION,
        "groups": groups,
        "runs": [{**r.run, "cells": r.cells, "telemetry": r.telemetry, "quality": r.quality} for r in results],
    }
    if len(results) > 1:
        doc["comparison"] = comparison_section(results, baseline, floors, floor_note)
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def render(fmt_name: str, results: list[RunResult], groups: list[dict[str, Any]], baseline: int = 0,
           floors: dict[str, float] | None = None, floor_note: str = "") -> str:  # fmt: skip
    """`floors`/`floor_note`: the hosts' noise floors (store.noise.floors_for) that decide significance."""
    if fmt_name == "csv":
        return to_csv(results, baseline, floors)
    if fmt_name == "md":
        return to_markdown(results, baseline, floors=floors, floor_note=floor_note)
    if fmt_name == "html":
        return to_html(results, baseline, floors=floors, floor_note=floor_note)
    if fmt_name == "json":
        return to_json(results, groups, baseline, floors, floor_note)
    raise ValueError(f"unknown format '{fmt_name}' (known: {', '.join(FORMATS)})")


def export_text(db: Any, results: list[RunResult], fmt_name: str, baseline: int = 0) -> str:
    """One export of stored runs, as `codebench-tui export` and the Compare screen write it: JSON with its
    groups, every format with the hosts' noise floors."""
    from store.noise import floors_of

    groups: list[dict[str, Any]] = []
    if fmt_name == "json":
        with db.session() as s:
            found = (s.get(RunGroup, g) for g in sorted({r.run["group_id"] for r in results}))
            groups = [g.model_dump() for g in found if g is not None]
    floors, note = floors_of(db, results)
    return render(fmt_name, results, groups, baseline, floors, note)


def import_export(doc: dict[str, Any], *, session: Session) -> tuple[int, int]:
    """Insert the runs of an export; runs already present (same id) are skipped. Returns (added, skipped).
    A document that did not come from parse_export/read_export is checked first."""
    if not isinstance(doc, CheckedExport):
        doc = check(doc, "the document")
    added = skipped = 0
    for g in doc.get("groups", []):
        if session.get(RunGroup, g["id"]) is None:
            session.add(RunGroup(**g))
    session.flush()
    for r in doc.get("runs", []):
        if session.get(Run, r["id"]) is not None:
            skipped += 1
            continue
        data = dict(r)
        cells, samples, quality = data.pop("cells", []), data.pop("telemetry", []), data.pop("quality", [])
        if session.get(RunGroup, data["group_id"]) is None:
            session.add(RunGroup(id=data["group_id"], created_at=data["created_at"], spec=data.get("spec") or {}))
            session.flush()
        session.add(Run(**data))
        session.flush()
        for c in cells:
            session.add(CellRow(run_id=r["id"], **c))
        for s in samples:
            session.add(Telemetry(run_id=r["id"], **s))
        for q in quality:
            session.add(Quality(run_id=r["id"], **q))
        added += 1
    return added, skipped
