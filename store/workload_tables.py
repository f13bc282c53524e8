"""Quality tables of the scored workloads, from stored cells: the needle heat map and the FIM scores.

Needle: retrieval accuracy over context length (columns) x depth (rows, 0 % = the top of the haystack), the
usual needle-in-a-haystack map; cells of other batches or output lengths at the same (context, depth) pool their
answers. FIM: exact match and edit similarity of the middle per cell. Stored data may come from an import, so a
figure of the wrong type counts as absent.
"""

from __future__ import annotations

from typing import Any

from store.results import RunResult
from store.tables import Table, title_of


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _part(cell: dict[str, Any], key: str) -> dict[str, Any] | None:
    metrics = cell.get("metrics")
    part = metrics.get(key) if isinstance(metrics, dict) else None
    return part if isinstance(part, dict) else None


def needle_grid(result: RunResult) -> tuple[list[int], list[int], dict[tuple[int, int], float]]:
    """(contexts, depths, accuracy by (context, depth)) over the run's scored cells."""
    pooled: dict[tuple[int, int], list[float]] = {}
    for c in result.cells:
        part = _part(c, "needle")
        hits, n = (_number(part.get("hits")), _number(part.get("n"))) if part else (None, None)
        depth = _number((c.get("params") or {}).get("depth"))
        if hits is None or not n or depth is None or not isinstance(c.get("input_len"), int):
            continue
        acc = pooled.setdefault((c["input_len"], int(depth)), [0.0, 0.0])
        acc[0] += hits
        acc[1] += n
    grid = {key: h / n for key, (h, n) in pooled.items()}
    return sorted({k[0] for k in grid}), sorted({k[1] for k in grid}), grid


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def needle_table(result: RunResult) -> Table | None:
    contexts, depths, grid = needle_grid(result)
    if not grid:
        return None
    rows = [[f"{d}%"] + [percent(grid.get((n, d))) for n in contexts] for d in depths]
    return Table(f"needle retrieval accuracy: {title_of(result)}", ["depth \\ context", *map(str, contexts)], rows,
                 ["share of answers that hold the planted value; depth: where the fact sits in the haystack "
                  "(0% = top)"])  # fmt: skip


def fim_table(result: RunResult) -> Table | None:
    rows = []
    for c in result.cells:
        part = _part(c, "fim")
        if part is None:
            continue
        em, es = _number(part.get("exact_match")), _number(part.get("edit_similarity"))
        rows.append([str(c.get("batch")), str(c.get("input_len")), str(c.get("output_len")), percent(em),
                     "-" if es is None else f"{es:.3f}", str(part.get("n", "-")), str(part.get("format", "-"))])
    if not rows:
        return None
    return Table(f"fill-in-the-middle: {title_of(result)}",
                 ["batch", "input", "output", "exact match", "edit similarity", "n", "format"], rows,
                 ["the hidden line against the model's answer up to its end token, over the cell's last minibatch"])


def workload_tables(result: RunResult) -> list[Table]:
    """The run's scored-workload tables (none for the other workloads)."""
    return [t for t in (needle_table(result), fim_table(result)) if t is not None]


def workload_columns(cell: dict[str, Any]) -> list[Any]:
    """The CSV's needle_accuracy, fim_exact_match, fim_edit_similarity of one cell ("" where absent)."""
    needle, fim = _part(cell, "needle") or {}, _part(cell, "fim") or {}
    figures = (_number(needle.get("accuracy")), _number(fim.get("exact_match")), _number(fim.get("edit_similarity")))
    return ["" if v is None else v for v in figures]
