"""The verdict as a document a team can paste into a decision: the constraints, the winner, the evidence table
(the ranking, or the winner per point of the grid), every exclusion and missing figure, the frontier, and the
runs and environment it holds for. Every name is the user's: escaped as text in both formats."""

from __future__ import annotations

from store.export import _CSS, _esc, _html_table, host_line, markdown_table, md_escape, when
from store.safe import LINE, NAME, shown
from store.verdict import Verdict, tables, text_lines


def _runs(v: Verdict) -> list[str]:
    results = {id(e.result): e.result for e in v.ranked + v.unverified + v.excluded}.values()
    return [f"{shown(r.short_id, NAME)} {shown(r.run['label'], NAME)} on {shown(r.run['model'], NAME)} "
            f"({shown(r.run.get('device') or '?', NAME)}), {when(r.run.get('created_at'))}: {shown(host_line(r.run), LINE)}"
            for r in sorted(results, key=lambda r: r.run.get("created_at") or 0)]  # fmt: skip


def to_markdown(v: Verdict) -> str:
    out = ["# codebench-tui verdict", ""]
    out += [f"- {md_escape(line)}" for line in text_lines(v)] + [""]
    out += [markdown_table(t) for t in tables(v)]
    out += ["## Runs", ""] + [f"- {md_escape(line)}" for line in _runs(v)]
    return "\n".join(out).rstrip() + "\n"


def to_html(v: Verdict) -> str:
    items = "".join(f"<li>{_esc(line)}</li>" for line in text_lines(v))
    runs = "".join(f"<li>{_esc(line)}</li>" for line in _runs(v))
    body = "".join(_html_table(t) for t in tables(v))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>codebench-tui verdict</title><style>{_CSS}</style>"
            f"</head><body><h1>codebench-tui verdict</h1><ul>{items}</ul>{body}<h2>Runs</h2><ul>{runs}</ul>"
            "</body></html>\n")  # fmt: skip
