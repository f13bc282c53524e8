"""The memory plan as the CLI and the Setup screen show it: per run the cells predicted not to fit this device
(engines.harness.memplan), and the largest predicted peak. Plain text: run labels and cell labels carry the
user's model names and options, so they reach Rich as Text, never as markup. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.safe import LINE, NAME, shown

SHOWN_CELLS = 8  # per run; the rest are counted


def fitted_for(db_path: str | Path | None, device: str) -> dict[tuple[str, str], tuple[int, int]]:
    """This host's fitted constants from the database, when there is one; reading never creates it."""
    from engines.harness.memplan import host_fits
    from engines.measure.hardware import fingerprint
    from store.db import StoreError, default_db_path, open_db

    try:
        db = open_db(db_path or default_db_path(), create=False)
    except (StoreError, OSError):
        return {}
    try:
        return host_fits(db, fingerprint(), device)
    finally:
        db.close()


def plan_for(spec: Any, device: str, db_path: str | Path | None = None) -> list[Any]:
    from engines.harness.memplan import plan

    return plan(spec, device, fitted_for(db_path, device))


def plan_lines(runs: list[Any]) -> list[str]:
    """Lines for `run --dry-run` and before a run: per run its predicted-OOM cells, then the largest peak."""
    from engines.harness.memplan import fits_alone, gib

    out = []
    for rm in runs:
        entries = rm.entries()
        over = [(c, e) for c, e in zip(rm.cells, entries) if e is not None and e["fits"] is False]
        label = shown(rm.run.label(), NAME)
        if over:
            cells = ", ".join(f"{c.label()} {gib(e['predicted_bytes'])}" for c, e in over[:SHOWN_CELLS])
            more = f" and {len(over) - SHOWN_CELLS} more" if len(over) > SHOWN_CELLS else ""
            cap = over[0][1]["capacity_bytes"]
            out.append(f"{label}: {len(over)} cell(s) predicted OOM (> {gib(cap)}): {cells}{more}")
            alone = sum(fits_alone(e) for _, e in over)
            if alone:  # interleaving keeps the other runs' memory beside each cell
                out.append(f"{label}: {alone} of them would fit without the interleaved runs beside them "
                           "(--schedule sequential)")
        known = [e for e in entries if e is not None]
        if not known:
            out.append(f"{label}: peak memory not predicted (the model cannot be sized here)")
    summary = summary_line(runs)
    if summary:
        out.append(summary)
    return [shown(line, LINE * 4) for line in out]


def summary_line(runs: list[Any]) -> str:
    """"predicted peak: max X GiB of Y GiB", with the predicted-OOM count; "" where nothing was predicted."""
    from engines.harness.memplan import gib, summarise

    s = summarise(runs)
    if s.peak is None:
        return ""
    of = f" of {gib(s.capacity)}" if s.capacity is not None else " (capacity unknown)"
    oom = f"; {len(s.over)} cell(s) predicted OOM" if s.over else ""
    return f"predicted peak: max {gib(s.peak)}{of}{oom}"


def short_line(runs: list[Any]) -> str:
    """summary_line for Setup's narrow plan panel: "memory: max 0.5 / 64.0 GiB, 3 predicted OOM"."""
    from engines.harness.memplan import summarise

    s = summarise(runs)
    if s.peak is None:
        return ""
    cap = f" / {s.capacity / 2**30:.1f}" if s.capacity is not None else ""
    return f"memory: max {s.peak / 2**30:.1f}{cap} GiB" + (f", {len(s.over)} predicted OOM" if s.over else "")


_FITS: dict[tuple[str, str], dict[tuple[str, str], tuple[int, int]]] = {}  # (database, device) -> fitted constants


def warm(db_path: str | Path | None, device: str) -> None:
    """Read this host's fitted constants once, off the UI thread (Setup's loader); setup_line uses them."""
    _FITS[(str(db_path), device)] = fitted_for(db_path, device)


def setup_line(model: str, runs: list[Any], cells: list[tuple[int, int, int]], device: str, limit: int | None,
               db_path: str | Path | None = None, schedule: str = "sequential") -> str:  # fmt: skip
    """Setup's summary line: the largest predicted peak against this device and the predicted-OOM count; "" where
    nothing can be predicted (a model still being typed, a URL). Never raises: the form is half-typed."""
    from engines.harness.memplan import RunMemory, device_total, share_device
    from engines.study.grid import Cell

    try:
        grid = [Cell(b, i, o) for b, i, o in cells]
        fits = _FITS.get((str(db_path), device), {})
        total = device_total(device)
        planned = [RunMemory(model.strip(), run, device, grid, total, limit, fits) for run in runs]
        if schedule == "interleaved":
            share_device(planned)
        return short_line(planned)
    except Exception:  # a model reference the memory model cannot read must not break the form
        return ""
