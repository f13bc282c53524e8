"""Stored runs: `runs`, `--replay`, `compare`, `export`, `import`. None of these needs torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from store.vocabulary import FORMATS, METRICS

if TYPE_CHECKING:  # the store and rich load when a command runs, not when the dashboard starts
    from rich.console import Console

    from store.db import Database
    from store.results import RunResult



def _count(text: str) -> int:
    if not text.strip().isdigit() or int(text) > 10**9:
        raise argparse.ArgumentTypeError(f"'{text[:40]}' is not a whole number from 0 to 1000000000")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list stored runs, newest first")
    p.add_argument("--limit", type=_count, default=20, help="how many (default 20; 0 for all)")
    p.set_defaults(func=runs)

    p = sub.add_parser("compare", help="runs side by side, with ratios against a baseline")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, id prefixes or last, last~1, ...")
    p.add_argument("--baseline", metavar="RUN", help="the run the ratios divide by (default: the first)")
    p.add_argument("--metric", default="tokens_per_s", choices=list(METRICS))
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--pareto", choices=("throughput", "goodput"),
                   help="also the Pareto frontier of tok/s per device against tok/s per user (goodput: only the "
                   "tokens of requests that met every SLO)")
    p.set_defaults(func=compare)

    p = sub.add_parser("export", help="write runs as CSV, Markdown, JSON or HTML")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: standard output)")
    p.add_argument("--baseline", metavar="RUN")
    p.set_defaults(func=export)

    p = sub.add_parser("import", help="read a JSON export, or llama-bench, llama-batched-bench, vllm bench serve or "
                       "vllm bench throughput output, into the database")
    p.add_argument("file", metavar="FILE")
    g = p.add_argument_group("what another tool's file lacks")
    g.add_argument("--input-len", type=int, help="input tokens per request (vllm bench throughput)")
    g.add_argument("--output-len", type=int, help="output tokens per request (vllm bench throughput)")
    g.add_argument("--model", help="the model the file measured (llama-batched-bench, vllm bench throughput)")
    g.add_argument("--device", help="where it ran, e.g. cpu or cuda:0 (llama-batched-bench, vllm bench throughput)")
    p.set_defaults(func=import_file)


def _baseline(results: list[RunResult], db: Database, ref: str | None) -> int:
    from store.queries import resolve_run

    if not ref:
        return 0
    with db.session() as s:
        run_id = resolve_run(ref, session=s).id
    for i, r in enumerate(results):
        if r.id == run_id:
            return i
    from tui.errors import UsageError

    raise UsageError(f"--baseline {ref} is not one of the runs being compared; add it to the list")


def runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    from store.db import open_db
    from store.export import when
    from store.queries import count_runs, list_runs
    from store.results import load_result
    from store.safe import LINE, NAME, shown
    from tui.status import STATUS_STYLE

    db = open_db(args.db, create=False)
    console = Console()
    with db.session() as s:
        total = count_runs(session=s)
        rows = list_runs(session=s, limit=args.limit or None)
        results = [load_result(r, session=s, telemetry=False) for r in rows]
    if not results:
        console.print(Text(f"no runs stored in {shown(db.path, LINE)}"))
        return 0
    # Every cell is Text: names, labels and models are data, never markup.
    table = RichTable(title=Text(f"{total} run(s) in {shown(db.path, LINE)}"), title_justify="left", header_style="bold")
    table.add_column("id", no_wrap=True, min_width=8)
    table.add_column("started", no_wrap=True)
    for col in ("run", "model", "status", "cells", "best tok/s"):
        table.add_column(col, justify="right" if col == "best tok/s" else "left", no_wrap=col == "status")
    for r in results:
        counts = r.status_counts()
        best = max((c["tokens_per_s"] for c in r.cells if c.get("tokens_per_s")), default=None)
        bad = ", ".join(f"{n} {shown(k, NAME)}" for k, n in counts.items() if k != "done")
        name = f"{shown(r.run['name'], NAME)}: " if r.run.get("name") else ""
        what = f"{name}{shown(r.run['label'], NAME)} ({shown(r.run.get('device') or '?', NAME)})"
        table.add_row(Text(shown(r.short_id)), when(r.run["created_at"])[5:16], Text(what),
                      Text(shown(r.run["model"], NAME)), Text(shown(r.status, NAME), style=STATUS_STYLE.get(r.status, "")),
                      Text(f"{counts.get('done', 0)}/{r.run['cells_total']}" + (f" ({bad})" if bad else "")),
                      f"{best:,.1f}" if best else "-")  # fmt: skip
    console.print(table)
    if total > len(results):
        console.print(f"({total - len(results)} older; --limit 0 shows all)")
    return 0


def replay(args: argparse.Namespace) -> int:
    from rich.console import Console

    from store.db import open_db
    from store.results import load_results
    from store.tables import cell_table
    from tui.render import print_replay

    db = open_db(args.db, create=False)
    (result,) = load_results(db, [args.replay], telemetry=True)
    if not args.headless and sys.stdout.isatty():
        try:
            from tui.app import run_app
        except ImportError:
            run_app = None
        if run_app is not None:
            return run_app(db_path=args.db, replay=result.id)
    print_replay(Console(), result, cell_table(result))
    return 0


def show_group(console: Console, db: Database, run_ids: list[str]) -> None:
    """What a finished `run` prints: the comparison (or the one run's cells) and its chart."""
    from store.noise import floors_of
    from store.results import load_results
    from store.tables import cell_table, comparison_table
    from tui.render import print_replay, rich_table, tokens_chart

    if not run_ids:
        return
    results = load_results(db, run_ids)
    from store.workload_tables import workload_tables

    scored = [t for r in results for t in workload_tables(r)]  # needle heat map, FIM scores
    if len(results) == 1:
        print_replay(console, results[0], cell_table(results[0]))
        for t in scored:
            console.print(rich_table(t))
        return
    from store.tables import quality_table

    if any(r.cells for r in results):
        floors, note = floors_of(db, results)
        console.print(rich_table(comparison_table(results, floors=floors, floor_note=note)))
    if any(r.quality for r in results):
        console.print(rich_table(quality_table(results)))
    for t in scored:
        console.print(rich_table(t))
    chart = tokens_chart(results, width=min(console.width, 100))
    if chart:
        console.print(chart)


def compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from store.db import open_db
    from store.noise import floors_of
    from store.results import load_results
    from store.tables import comparison_table
    from tui.render import rich_table, tokens_chart

    db = open_db(args.db, create=False)
    results = load_results(db, args.runs)
    base = _baseline(results, db, args.baseline)
    console = Console()
    from store.tables import quality_table

    floors, note = floors_of(db, results)
    console.print(rich_table(comparison_table(results, base, args.metric, floors, note)))
    if any(r.quality for r in results):
        console.print(rich_table(quality_table(results, base)))
    if not args.no_chart:
        chart = tokens_chart(results, width=min(console.width, 100))
        if chart:
            console.print(chart)
    if args.pareto:
        from store.pareto import pareto_table
        from tui.widgets.charts import pareto_chart

        goodput = args.pareto == "goodput"
        table = pareto_table(results, goodput)
        if table is None:
            console.print("no cell has " + ("a serving SLO (run with --slo)" if goodput else "a per-user speed"))
        else:
            console.print(rich_table(table))
            if not args.no_chart:
                chart = pareto_chart(results, min(console.width, 100), 20, goodput)
                if chart:
                    console.print(chart)
    return 0


def export(args: argparse.Namespace) -> int:
    from store.db import open_db
    from store.export import export_text
    from store.results import load_results
    from tui.outputs import check_output, write_atomic
    from tui.predictions import for_export

    db = open_db(args.db, create=False)
    if args.output:
        check_output(args.output, db.path)  # before the work, and again when writing
    results = load_results(db, args.runs, telemetry=args.format == "json")
    results = for_export(db, results, args.format)
    text = export_text(db, results, args.format, _baseline(results, db, args.baseline))
    if args.output:
        out = write_atomic(args.output, text, db.path)
        print(f"wrote {len(results)} run(s) to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def import_file(args: argparse.Namespace) -> int:
    """Check the whole file first, then open (or create) the database: a bad file writes nothing."""
    from store.db import open_db
    from store.export import import_export, read_export
    from tui.errors import UsageError
    from tui.outputs import DB_SIDE_FILES, db_in_use

    hints = {k: v for k in ("input_len", "output_len", "model", "device") if (v := getattr(args, k)) is not None}
    for key in ("input_len", "output_len"):
        if key in hints and not 1 <= hints[key] <= 10**9:
            raise UsageError(f"--{key.replace('_', '-')} must be from 1 to 1000000000 tokens")
    doc = read_export(Path(args.file), hints)
    target = db_in_use(args)
    new_paths = _absent([target.with_name(target.name + s) for s in DB_SIDE_FILES]
                        + list(reversed(target.parents)))  # fmt: skip
    try:
        db = open_db(target, create=True)
        try:
            with db.session() as s:
                added, skipped = import_export(doc, session=s)
                s.commit()
        finally:
            db.close()
    except BaseException:
        _remove(new_paths)  # no empty database (or folder) left behind by a failed import
        raise
    print(f"imported {added} run(s) into {db.path}" + (f", {skipped} already there" if skipped else ""))
    return 0


def _absent(paths: list[Path]) -> list[Path]:
    return [p for p in paths if not p.exists() and not p.is_symlink()]


def _remove(paths: list[Path]) -> None:
    """Files this command created, then the folders it created, deepest first (only if empty)."""
    for p in sorted(paths, key=lambda p: len(p.parts), reverse=True):
        try:
            p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
        except OSError:
            pass
