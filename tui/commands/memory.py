"""`codebench-tui memory [RUN...]`: the memory model against stored measurements, and which cells would fit on
a card of another size.

Per engine and basis: how far the predicted peaks were from the measured ones (done cells only: an OOM cell's
peak is where it stopped) and the constant the model uses (fitted from this host's stored runs, else the
default). Per run: the boundary over batch x input length (store.boundary). Runs stored before predictions were
written get them computed from their stored configuration (tui.predictions). Reads only; never imports torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from tui.commands.run import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="predicted vs measured peak memory, and which cells fit a card of a given size")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids, id prefixes or last, last~1, ... (default: the latest study)")
    p.add_argument("--device-mem", type=parse_size, metavar="SIZE",
                   help="project onto a card of this size, e.g. 80GiB: which cells would fit")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def _latest_group(db: Any) -> list[str]:
    from store.queries import resolve_run, runs_in_group

    with db.session() as s:
        newest = resolve_run("last", session=s)
        return [r.id for r in runs_in_group(newest.group_id, session=s)]


def engine_errors(results: list) -> list[dict[str, Any]]:
    """Per (engine, basis): done cells with both figures, the median and worst error (measured / predicted - 1,
    as store.memfit.error_rows) and the constant in use (as the cells' predictions carry it)."""
    from store.boundary import capacity_of, fit_cell
    from store.memfit import memory_of

    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        engine = str((r.run.get("config") or {}).get("engine") or "?")
        capacity = capacity_of(r)
        for c in r.cells:
            mem = memory_of(c.get("metrics"))
            if not mem:
                continue
            fc = fit_cell(c, r.run.get("device"), capacity, None)
            g = groups.setdefault((engine, fc.basis), {"errors": [], "constant": mem.get("constant"),
                                                        "source": mem.get("constant_source") or "stored"})  # fmt: skip
            if fc.status == "done" and fc.measured and fc.predicted:
                g["errors"].append(fc.measured / fc.predicted - 1)
    out = []
    for (engine, basis), g in sorted(groups.items()):
        errs = g["errors"]
        out.append({"engine": engine, "basis": basis, "cells": len(errs),
                    "median_error": statistics.median(errs) if errs else None,
                    "worst_error": max(errs, key=abs) if errs else None,
                    "constant_bytes": g["constant"] if type(g["constant"]) is int else None,
                    "constant_source": str(g["source"])})  # fmt: skip
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def run(args: argparse.Namespace) -> int:
    from store.boundary import grids_of
    from store.db import open_db
    from store.results import load_results
    from tui.predictions import with_predictions

    db = open_db(args.db, create=False)
    refs = args.runs or _latest_group(db)
    results = with_predictions(db, load_results(db, refs))
    grids = {r.id: grids_of(r, args.device_mem) for r in results}
    engines = engine_errors(results)
    if args.json:
        print(json.dumps(_json(results, grids, engines, args.device_mem), indent=1, sort_keys=True))
        return 0
    _print(results, grids, engines, args.device_mem)
    return 0


def _json(results: list, grids: dict[str, list], engines: list, projected: int | None) -> dict[str, Any]:
    runs = []
    for r in results:
        cells = [{"batch": fc.batch, "input_len": fc.input_len, "output_len": fc.output_len, "status": fc.status,
                  "measured_bytes": fc.measured, "predicted_bytes": fc.predicted, "fits": fc.fits,
                  "fits_projected": fc.fits_projected, "disagrees": fc.disagrees}
                 for g in grids[r.id] for fc in g.cells.values()]  # fmt: skip
        capacity = grids[r.id][0].capacity if grids[r.id] else None
        runs.append({"run_id": r.id, "label": r.run.get("label"), "device": r.run.get("device"),
                     "capacity_bytes": capacity, "cells": cells})  # fmt: skip
    return {"projected_bytes": projected, "engines": engines, "runs": runs}


def _print(results: list, grids: dict[str, list], engines: list, projected: int | None) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    from store.boundary import boundary_table, gib, legend
    from store.safe import NAME, shown
    from tui.render import rich_table

    console = Console()
    table = RichTable(title=Text("predicted vs measured peak memory (measured / predicted - 1, done cells)"),
                      title_justify="left", header_style="bold")  # fmt: skip
    for col in ("engine", "basis", "cells", "median error", "worst error", "constant"):
        table.add_column(col, justify="left" if col in ("engine", "basis") else "right")
    for e in engines:
        const = "-" if e["constant_bytes"] is None else f"{e['constant_bytes'] / 2**20:,.0f} MiB"
        table.add_row(Text(shown(e["engine"], NAME)), Text(shown(e["basis"], NAME)), str(e["cells"]),
                      _pct(e["median_error"]), _pct(e["worst_error"]),
                      Text(f"{const} ({shown(e['constant_source'], NAME)})"))  # fmt: skip
    if not engines:
        table.caption = Text("no cell could be sized: no stored prediction and no known model or engine")
    console.print(table)
    shown_legend = False
    for r in results:
        for g in grids[r.id]:
            if not shown_legend:  # the same words under every grid would bury them
                console.print(Text(legend(g), style="dim"), soft_wrap=True)
                shown_legend = True
            t = boundary_table(g, with_legend=False)
            notes, t.notes = t.notes, []
            console.print(Text(t.title, style="bold"), soft_wrap=True)  # whole: a narrow grid would wrap its title
            t.title = ""
            console.print(rich_table(t))
            for line in notes:  # whole lines: a script greps them
                console.print(Text(line), soft_wrap=True)
            if projected is not None:
                would = [fc for fc in g.cells.values() if fc.status == "oom" and fc.fits_projected]
                for fc in would:
                    console.print(Text(f"  b={fc.batch} in={fc.input_len} out={fc.output_len} ran out of memory "
                                       f"here and is predicted to fit on a {gib(projected, 0)} GiB card "
                                       f"({gib(fc.predicted)} GiB predicted)"), soft_wrap=True)  # fmt: skip
    sys.stdout.flush()
