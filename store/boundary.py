"""A run's memory boundary over batch x input length: what each cell measured (ok, OOM, skipped, ...), whether
the memory model predicted it to fit on the run's own card, and whether it would fit on a card of another size.

Plain data from stored cells: the prediction is a cell's metrics["memory"] (the runner writes it; for runs stored
before that, the UI fills it in from engines.models.memory, since the store imports no engine code). The fit rule
is engines.models.memory.Prediction.fits restated on the stored figures: on a GPU the peak plus the largest
single block must fit (the caching allocator needs fresh room for it), elsewhere the peak alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from store.memfit import _bytes, measured, memory_of
from store.results import RunResult
from store.safe import NAME, shown
from store.tables import Table, status_mark, title_of

GIB = 2**30
CARD_SIZES = (24, 40, 48, 80, 141)  # GiB: common accelerator sizes the projection cycles through


def gib(value: int | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value / GIB:.{digits}f}"


def need_bytes(mem: dict[str, Any] | None) -> int | None:
    """What must fit: the predicted peak, plus on a GPU its largest block (Prediction.fits)."""
    if mem is None:
        return None
    total = _bytes(mem.get("predicted_bytes"))
    if total is None:
        return None
    return total + ((_bytes(mem.get("largest_block")) or 0) if mem.get("basis") == "gpu" else 0)


def fits_on(mem: dict[str, Any] | None, capacity: int | None) -> bool | None:
    need = need_bytes(mem)
    return None if need is None or capacity is None else need <= capacity


@dataclass(frozen=True)
class FitCell:
    batch: int
    input_len: int
    output_len: int
    status: str
    measured: int | None  # bytes, by the prediction's basis (store.memfit.measured)
    predicted: int | None  # the predicted peak, bytes
    fits: bool | None  # predicted to fit on the run's own card (None: no prediction or no capacity)
    fits_projected: bool | None  # predicted to fit on the projected card
    basis: str = "rss"  # what `measured` and `predicted` are: "gpu" (allocator, else NVML) or "rss"

    @property
    def disagrees(self) -> bool:
        """The prediction on the run's card contradicts what happened: ran though predicted OOM, or the reverse."""
        return (self.status == "done" and self.fits is False) or (self.status == "oom" and self.fits is True)


@dataclass
class BoundaryGrid:
    run_id: str
    title: str  # shown
    capacity: int | None  # the run's card, bytes
    projected: int | None  # the other card, bytes
    output_len: int
    params: str  # the other axes of this slice (shown), "" for a plain grid
    batches: list[int] = field(default_factory=list)
    input_lens: list[int] = field(default_factory=list)
    cells: dict[tuple[int, int], FitCell] = field(default_factory=dict)

    @property
    def unit(self) -> tuple[str, int, int]:
        """(name, bytes, decimals) the grid's predictions are shown in: MiB where every one is under 1 GiB (tiny
        models, where GiB would print 0.5 in every cell)."""
        peaks = [c.predicted for c in self.cells.values() if c.predicted is not None]
        return ("GiB", GIB, 1) if not peaks or max(peaks) >= GIB else ("MiB", 2**20, 0)

    def size(self, value: int | None) -> str:
        name, scale, digits = self.unit
        return "-" if value is None else f"{value / scale:,.{digits}f}"

    def counts(self) -> dict[str, int]:
        """How the prediction did on the run's card, and what the projection changes."""
        cs = list(self.cells.values())
        return {
            "predicted": sum(c.fits is not None for c in cs),
            "disagree": sum(c.disagrees for c in cs),
            "fit_projected": sum(c.fits_projected is True for c in cs),
            "oom_projected": sum(c.fits_projected is False for c in cs),
            "oom_would_fit": sum(c.status == "oom" and c.fits_projected is True for c in cs),
        }


def capacity_of(result: RunResult) -> int | None:
    """The run's card as the runner stored it with the predictions, else None. An interleaved run's cells were
    judged against less (what the runs beside it held, held_beside_bytes): the card is the sum."""
    for c in result.cells:
        mem = memory_of(c.get("metrics")) or {}
        cap = _bytes(mem.get("capacity_bytes"))
        if cap:
            return cap + (_bytes(mem.get("held_beside_bytes")) or 0)
    return None


class _Row:  # store.memfit.measured reads attributes of a CellRow; a result's cell is a dict
    def __init__(self, cell: dict[str, Any]) -> None:
        self.__dict__.update(cell)


def fit_cell(cell: dict[str, Any], device: Any, capacity: int | None, projected: int | None) -> FitCell:
    mem = memory_of(cell.get("metrics"))
    own = _bytes(mem.get("capacity_bytes")) if mem else None  # this cell's room, interleaved runs beside it
    fits = fits_on(mem, own or capacity)
    if fits is None and mem and isinstance(mem.get("fits"), bool):  # the runner's verdict, where no size is stored
        fits = mem["fits"]
    basis = mem.get("basis") if mem and mem.get("basis") in ("gpu", "rss") else (
        "gpu" if isinstance(device, str) and device.startswith("cuda") else "rss")  # fmt: skip
    return FitCell(cell["batch"], cell["input_len"], cell["output_len"], str(cell.get("status") or ""),
                   measured(_Row(cell), basis), _bytes(mem.get("predicted_bytes")) if mem else None, fits,
                   fits_on(mem, projected), basis)  # fmt: skip


def grids_of(result: RunResult, projected: int | None = None) -> list[BoundaryGrid]:
    """One grid per output length and extra-axis setting (most runs have one)."""
    capacity = capacity_of(result)
    grids: dict[tuple, BoundaryGrid] = {}
    for c in result.cells:
        params = c.get("params") or {}
        key = (c["output_len"], tuple(sorted((str(k), str(v)) for k, v in params.items())) if isinstance(params, dict) else ())
        if key not in grids:
            extra = " ".join(f"{k}={v}" for k, v in key[1])
            grids[key] = BoundaryGrid(result.id, title_of(result, []), capacity, projected, c["output_len"],
                                      shown(extra, NAME))  # fmt: skip
        g = grids[key]
        fc = fit_cell(c, result.run.get("device"), capacity, projected)
        g.cells[(fc.batch, fc.input_len)] = fc
    for g in grids.values():
        g.batches = sorted({b for b, _ in g.cells})
        g.input_lens = sorted({i for _, i in g.cells})
    return list(grids.values())


def cell_text(c: FitCell | None, projection: bool, g: "BoundaryGrid | None" = None) -> str:
    """`ok 25.6 ✗ →✓ !`: measured status, predicted GiB, ✗ when predicted OOM on the run's card, the projected
    card's verdict, ! where the prediction contradicts the measurement."""
    if c is None:
        return ""
    parts = ["ok" if c.status == "done" else status_mark(c.status), g.size(c.predicted) if g else gib(c.predicted)]
    if c.fits is False:
        parts.append("✗")
    if projection:
        parts.append({True: "→✓", False: "→✗", None: "→?"}[c.fits_projected])
    if c.disagrees:
        parts.append("!")
    return " ".join(parts)


def legend(g: BoundaryGrid) -> str:
    text = "predicted peak (in the unit its title names); ✗ predicted OOM on the run's card (its size in the title, less what interleaved runs held beside it)"
    if g.projected:
        text += f"; →✓ / →✗ fits / OOM on a {gib(g.projected, 0)} GiB card"
    return text + "; ! the prediction disagrees with what was measured"


def grid_title(g: BoundaryGrid) -> str:
    extra = f" {g.params}" if g.params else ""
    card = f"{gib(g.capacity)} GiB card" if g.capacity else "card of unknown size"
    return f"memory boundary: {g.title} [{shown(g.run_id[:8])}] out={g.output_len}{extra}, {card} ({g.unit[0]})"


def boundary_table(g: BoundaryGrid, with_legend: bool = True) -> Table:
    """Rows are batch sizes, columns input lengths; styles carry each cell's measured status for colour.
    `with_legend`: a view that shows many grids says the legend once."""
    projection = g.projected is not None
    rows, styles = [], []
    for b in g.batches:
        cells = [g.cells.get((b, i)) for i in g.input_lens]
        rows.append([f"b={b}"] + [cell_text(c, projection, g) for c in cells])
        styles.append([""] + [(c.status if c else "missing") for c in cells])
    notes = [legend(g)] if with_legend else []
    n = g.counts()
    if projection:
        notes.append(f"on a {gib(g.projected, 0)} GiB card: {n['fit_projected']} cell(s) predicted to fit, "
                     f"{n['oom_projected']} to run out of memory"
                     + (f"; {n['oom_would_fit']} measured OOM would fit" if n["oom_would_fit"] else ""))  # fmt: skip
    if not n["predicted"]:
        notes.append("no prediction on the run's card: no stored prediction or no known capacity")
    return Table(grid_title(g), ["batch"] + [f"in={i}" for i in g.input_lens], rows, notes, styles)


def boundary_tables(result: RunResult, projected: int | None = None) -> list[Table]:
    """The run's grids as tables; none where no cell carries a prediction (nothing to draw a boundary from)."""
    if not any(memory_of(c.get("metrics")) for c in result.cells):
        return []
    return [boundary_table(g) for g in grids_of(result, projected)]
