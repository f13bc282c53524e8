"""Compare's memory view: per run, the batch x input grid of what each cell measured (ok, OOM, skipped), the
cells the memory model predicted not to fit on the run's card shaded (the predicted boundary), and each cell's
verdict on a card of another size (`p` cycles the sizes). The grids are store.boundary's, as `codebench-tui
memory` and the Markdown export draw them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text
from textual.widgets import Static

from store.safe import shown
from tui.status import STATUS_STYLE

if TYPE_CHECKING:  # the store's modules load when the view draws, not when the dashboard starts
    from store.boundary import FitCell

GIB = 2**30

PREDICTED_OOM = "on grey30"  # the shaded region: predicted not to fit on the run's own card


def cell_text(c: FitCell | None, projection: bool, g: Any) -> Text:
    from store.tables import status_mark

    if c is None:
        return Text("-", style="dim")
    word = "ok" if c.status == "done" else status_mark(c.status)
    t = Text(style=PREDICTED_OOM if c.fits is False else "")
    t.append(word, style=STATUS_STYLE.get(c.status, ""))
    t.append(" " + g.size(c.predicted))
    if c.fits is False:  # the shade says it too, but not on a terminal without colour
        t.append(" ✗", style="red")
    if projection:
        t.append(" →✓" if c.fits_projected else " →✗" if c.fits_projected is False else " →?",
                 style="green" if c.fits_projected else "red" if c.fits_projected is False else "dim")  # fmt: skip
    if c.disagrees:
        t.append(" !", style="bold yellow")
    return t


def boundary_group(results: list[Any], projected: int | None) -> Group | Text:
    """`results`: with predictions (tui.predictions.with_predictions)."""
    from store.boundary import grid_title, grids_of, legend

    parts: list[Any] = []
    head = Text.assemble(("projection ", "bold"), (f"{projected // GIB} GiB" if projected else "off", "cyan"),
                         ("   p: next card size", "dim"))  # fmt: skip
    for r in results:
        for g in grids_of(r, projected):
            if not parts:
                parts += [head, Text(legend(g) + "; shaded: predicted OOM on the run's card", style="dim"), Text("")]
            parts.append(Text(grid_title(g), style="bold"))
            t = RichTable(header_style="bold", box=None, padding=(0, 1))
            t.add_column("batch \\ in", justify="right")
            for i in g.input_lens:
                t.add_column(str(i), justify="center", min_width=9)
            for b in g.batches:
                t.add_row(Text(str(b), style="bold"), *(cell_text(g.cells.get((b, i)), projected is not None, g)
                                                        for i in g.input_lens))  # fmt: skip
            n = g.counts()
            note = f"{n['disagree']} cell(s) where the prediction disagrees" if n["predicted"] else \
                "no prediction: the model or engine cannot be sized, or the card's size is unknown"  # fmt: skip
            if projected and n["oom_would_fit"]:
                note += f"; {n['oom_would_fit']} measured OOM would fit on {projected // GIB} GiB"
            parts += [t, Text(shown(note), style="dim"), Text("")]
    return Group(*parts) if parts else Text("no cells to draw", style="dim")


class BoundaryMap(Static):
    """Loads the runs' predictions in a thread (fitted constants read the store), then draws."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("loading predictions…", **kw)
        self.results: list[Any] = []
        self.projected: int | None = None

    def load(self, results: list[Any]) -> None:
        app = self.app

        def work() -> None:
            from tui.predictions import with_predictions

            filled = with_predictions(app.database(), results)
            app.call_from_thread(self._loaded, filled)

        self.run_worker(work, thread=True, group="boundary-load", exit_on_error=False)

    def _loaded(self, results: list[Any]) -> None:
        self.results = results
        self.draw()

    def next_size(self) -> None:
        """Off, then each common card size, then off again."""
        from store.boundary import CARD_SIZES

        sizes = [None, *(s * GIB for s in CARD_SIZES)]
        self.projected = sizes[(sizes.index(self.projected) + 1) % len(sizes)] if self.projected in sizes else None
        self.draw()

    def draw(self) -> None:
        self.update(boundary_group(self.results, self.projected))
