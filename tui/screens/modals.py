"""Small dialogs: confirm, ask for a line of text, choose an export format and file."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from store.safe import LINE, shown
from tui.widgets.field import Field

FORMAT_NAMES = {"csv": "CSV", "md": "Markdown", "json": "JSON (lossless, importable)", "html": "HTML"}


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", tooltip="Confirm"),
        Binding("n,escape", "answer(False)", "No", tooltip="Keep things as they are"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__(classes="modal")
        self.question, self.yes, self.no = question, yes, no

    def compose(self):
        with Vertical(classes="dialog"):
            yield Static(Text(shown(self.question, LINE, lines=True)), classes="question")  # may name runs: never markup
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error")
                yield Button(f"{self.no} (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class PromptScreen(ModalScreen["str | None"]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", tooltip="Close without changes")]

    def __init__(self, title: str, value: str = "", placeholder: str = "", allow_empty: bool = False) -> None:
        super().__init__(classes="modal")
        self.title_text, self.value, self.placeholder, self.allow_empty = title, value, placeholder, allow_empty

    def compose(self):
        with Vertical(classes="dialog"):
            yield Label(Text(shown(self.title_text, LINE)), classes="question")
            yield Field(self.value, placeholder=self.placeholder, id="prompt-input")
            yield Static("enter: OK   escape: cancel", classes="hint")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if value or self.allow_empty:
            self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ExportScreen(ModalScreen["tuple[str, str] | None"]):
    """Pick a format (arrows) and a file name; enter writes."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", tooltip="Close without exporting")]

    def __init__(self, stem: str, fmt: str = "csv") -> None:
        super().__init__(classes="modal")
        self.stem, self.fmt = stem, fmt

    def compose(self):
        with Vertical(classes="dialog"):
            yield Label("Export the compared runs", classes="question")
            with RadioSet(id="export-format"):
                for key, name in FORMAT_NAMES.items():
                    yield RadioButton(name, value=key == self.fmt, id=f"fmt-{key}")
            yield Field(f"{self.stem}.{self.fmt}", id="export-path")
            yield Static("arrows: format   tab: file name   enter: write   escape: cancel", classes="hint")

    @on(RadioSet.Changed)
    def _format(self, event: RadioSet.Changed) -> None:
        self.fmt = (event.pressed.id or "fmt-csv").removeprefix("fmt-")
        path = self.query_one("#export-path", Input)
        stem = path.value.rsplit(".", 1)[0] if "." in path.value else path.value
        path.value = f"{stem}.{self.fmt}"

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss((self.fmt, event.value.strip()))

    def action_cancel(self) -> None:
        self.dismiss(None)
