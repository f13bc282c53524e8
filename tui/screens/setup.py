"""Setup: model, engines and their valid options, the grid, timing and a name; start, save or load a study.

The form builds the same StudySpec as `codebench-tui run` and checks it with the CLI's `validate`.
Engine availability and past timings load in a thread after the first frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.lazy import Lazy
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Select, SelectionList, Static
from textual.widgets.selection_list import Selection

from tui.widgets.footer import Footer
from tui.planning import axis_text, human_duration

DEVICES = [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")]
GRID_FIELDS = (("batch", "batch sizes"), ("input_len", "input lengths"), ("output_len", "output lengths"))
TIMING_FIELDS = (("warmup", "warm-up", 0), ("iters", "iters", 1), ("repeats", "repeats", 1))
DEFAULTS = {"batch": "1,2,4", "input_len": "32,128", "output_len": "32", "warmup": "1", "iters": "2", "repeats": "3"}


class SetupScreen(Screen):
    BINDINGS = [
        Binding("ctrl+r,f5", "start", "Start", tooltip="Validate the study and run it", id="setup-start",
                key_display="^r"),  # fmt: skip
        Binding("ctrl+s", "save", "Save study", tooltip="Write the study as JSON (codebench-tui run --study FILE)",
                id="setup-save", key_display="^s"),  # fmt: skip
        Binding("ctrl+o", "load", "Load study", tooltip="Read a study file into the form", id="setup-load",
                key_display="^o"),  # fmt: skip
    ]

    class Loaded(Message):
        """Engines, their options and past timings, checked in a thread."""

        def __init__(self, device: str, choices: list, rates: dict, models: list[tuple[str, str]]) -> None:
            super().__init__()
            self.device, self.choices, self.rates, self.models = device, choices, rates, models

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.choices: list = []  # tui.planning.EngineChoice, once loaded
        self.rates: dict = {}
        self.device = "cpu"
        self.base: dict[str, Any] = {}  # spec fields the form does not edit (kept from a loaded study)
        self.pending_runs: list | None = None  # runs of a study loaded before the engines were
        self.extra_combos: dict[str, Any] = {}  # key -> EngineRun from a loaded study (e.g. with options)
        self.estimate_s: float | None = None
        self._combo_keys: list[str] = []
        self._ready = False  # the Lazy parts of the form are mounted

    def compose(self):
        # The model line paints first; the rest mounts right after (Lazy): a blank terminal is what feels slow.
        with VerticalScroll(id="setup-scroll"):
            with Horizontal(id="setup-cols"):
                with Vertical(id="setup-left"):
                    yield Static("Model", classes="section")
                    yield Input("tiny", id="model", compact=True,
                                placeholder="tiny, a model directory, a .gguf file or an HF id")  # fmt: skip
                    yield Static(id="model-msg", classes="msg")
                    with Lazy(Vertical(id="setup-engines")):
                        yield Select([("tiny  (embedded, offline)", "tiny")], value="tiny", id="model-pick",
                                     compact=True, prompt="choose a model", allow_blank=True)  # fmt: skip
                        yield Static("Engines", classes="section")
                        yield SelectionList(id="engines", compact=True)
                        yield Static("checking engines…", id="engine-notes", classes="msg")
                        yield Static("Options  (valid combinations here)", classes="section")
                        yield SelectionList(id="combos", compact=True)
                        yield Static(id="combo-notes", classes="msg")
                with Lazy(Vertical(id="setup-right")):
                    yield Static("Grid  (1,2,4  or  32:129:x2)", classes="section")
                    for key, label in GRID_FIELDS:
                        with Horizontal(classes="field"):
                            yield Label(label, classes="field-label")
                            yield Input(DEFAULTS[key], id=f"grid-{key}", compact=True)
                    yield Static(id="grid-msg", classes="msg")
                    yield Static("Timing per cell", classes="section")
                    for key, label, _ in TIMING_FIELDS:
                        with Horizontal(classes="field"):
                            yield Label(label, classes="field-label")
                            yield Input(DEFAULTS[key], id=f"timing-{key}", compact=True, type="integer")
                    yield Static("Study", classes="section")
                    with Horizontal(classes="field"):
                        yield Label("name", classes="field-label")
                        yield Input("", id="name", compact=True, placeholder="optional")
                    with Horizontal(classes="field"):
                        yield Label("device", classes="field-label")
                        yield Select(DEVICES, value="auto", id="device", compact=True, allow_blank=False)
                    yield Static(id="plan-msg", classes="plan")
                    with Horizontal(id="setup-buttons"):
                        yield Button("Start ^r", id="start", variant="success", compact=True)
                        yield Button("Save ^s", id="save", compact=True)
                        yield Button("Load ^o", id="load", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#model-msg", Static).update(Text("checking…", style="dim"))
        self.call_after_refresh(self._after_first_frame)

    def _after_first_frame(self) -> None:
        if not self.query("#plan-msg") or not self.query("#combos"):  # the Lazy parts are not mounted yet
            self.set_timer(0.02, self._after_first_frame)
            return
        self._ready = True
        self._refresh_plan()
        # Engines, the store and pydantic load in a thread once the form is on screen.
        self.set_timer(0.05, lambda: self._load_choices("auto"))

    def on_resize(self) -> None:
        self.set_class(self.size.width < 90, "-narrow")

    # --- background loading ----------------------------------------------------------------

    def _load_choices(self, device_choice: str) -> None:
        app = self.app
        check = getattr(app, "engine_check", None)
        override = getattr(app, "device_override", None)

        def work() -> None:  # thread: plain data back as a message
            from store.history import engine_rates, recent_models
            from tui.planning import engine_choices, model_choices

            if device_choice == "auto":
                from engines.hardware import resolve_device

                device = override or resolve_device("auto")
            else:
                device = device_choice
            choices = engine_choices(device, check)
            import engines.models  # noqa: F401  (the model check, typed live, imports it)
            try:
                with app.database().session() as s:
                    rates, recent = engine_rates(session=s), recent_models(session=s)
            except Exception:  # no usable store: the estimate falls back to the defaults
                rates, recent = {}, []
            self.post_message(self.Loaded(device, choices, rates, model_choices(recent)))

        self.run_worker(work, thread=True, exclusive=True, group="setup-load", exit_on_error=False)

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.device, self.choices, self.rates = message.device, message.choices, message.rates
        self._check_model()
        pick = self.query_one("#model-pick", Select)
        current = self.query_one("#model", Input).value.strip()
        pick.set_options(message.models)
        if any(v == current for _, v in message.models):
            pick.value = current
        engines = self.query_one("#engines", SelectionList)
        ticked = set(engines.selected) if engines.option_count else {"hf-generate"}
        engines.clear_options()
        notes = Text()
        name_w = max((len(c.name) for c in self.choices), default=10) + 2
        for c in self.choices:
            if c.ok:
                engines.add_option(Selection(Text.assemble((c.name.ljust(name_w), "bold"), c.summary), c.name,
                                             c.name in ticked, id=c.name))  # fmt: skip
            else:
                engines.add_option(Selection(Text.assemble((c.name, "strike"), " " * (name_w - len(c.name)), c.reason), c.name, False,
                                             id=c.name, disabled=True))  # fmt: skip
                notes.append(f"{c.name}: ", style="bold")
                notes.append(f"{c.reason}")
                if c.hint:
                    notes.append(f"\n  {c.hint}", style="italic")
                notes.append("\n")
        notes.rstrip()
        self.query_one("#engine-notes", Static).update(notes or Text(f"all engines available on {self.device}", style="dim"))
        if self.pending_runs is not None:
            self._apply_runs(self.pending_runs)
            self.pending_runs = None
        else:
            self._rebuild_combos()
        self._refresh_plan()

    # --- engines and options -----------------------------------------------------------------

    def _rebuild_combos(self, select: set[str] | None = None) -> None:
        combos = self.query_one("#combos", SelectionList)
        previous = set(combos.selected) if select is None else select
        ticked = set(self.query_one("#engines", SelectionList).selected)
        had = set(self._combo_keys)
        combos.clear_options()
        keys: list[str] = []
        hidden = Text()
        for c in self.choices:
            if c.name not in ticked:
                continue
            ok = [x for x in c.combos if x.ok]
            extras = [r for r in self.extra_combos.values() if r.engine == c.name]
            first_time = not any(x.key in had for x in ok)
            for i, combo in enumerate(ok):
                on_ = combo.key in previous or (select is None and first_time and i == 0)
                combos.add_option((combo.run.label(), combo.key, on_))
                keys.append(combo.key)
            for run in extras:
                key = run.model_dump_json()
                if key not in keys:
                    combos.add_option((run.label(), key, key in previous))
                    keys.append(key)
            reasons = sorted({x.reason for x in c.combos if not x.ok})
            if reasons and c.ok:
                n = sum(1 for x in c.combos if not x.ok)
                hidden.append(f"{c.name}: {n} not offered ({'; '.join(reasons)})\n", style="dim")
        self._combo_keys = keys
        hidden.rstrip()
        self.query_one("#combo-notes", Static).update(hidden)

    @on(SelectionList.SelectedChanged, "#engines")
    def _engines_changed(self) -> None:
        self._rebuild_combos()
        self._refresh_plan()

    @on(SelectionList.SelectedChanged, "#combos")
    def _combos_changed(self) -> None:
        self._refresh_plan()

    def selected_runs(self) -> list[Any]:
        from engines.spec import EngineRun

        return [EngineRun.model_validate_json(k) for k in self.query_one("#combos", SelectionList).selected]

    # --- model -------------------------------------------------------------------------------

    @on(Select.Changed, "#model-pick")
    def _model_picked(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            model = self.query_one("#model", Input)
            if model.value != event.value:
                model.value = event.value

    @on(Select.Changed, "#device")
    def _device_changed(self, event: Select.Changed) -> None:
        if self.choices:
            self._load_choices(str(event.value))

    def _check_model(self) -> bool:
        from tui.planning import check_model_text

        ok, msg = check_model_text(self.query_one("#model", Input).value)
        self.query_one("#model-msg", Static).update(Text(("✓ " if ok else "✗ ") + msg, style="green" if ok else "red"))
        self.query_one("#model", Input).set_class(not ok, "-invalid")
        return ok

    # --- validation, as you type -----------------------------------------------------------

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if event.input.id == "model" and self.choices:
            self._check_model()
        self._refresh_plan()

    def _form(self) -> tuple[dict[str, Any] | None, list[str]]:
        """The grid and timing parsed, or the first problem per field."""
        from tui.planning import parse_count, parse_grid_axis

        errors, grid, timing = [], {}, {}
        for key, _ in GRID_FIELDS:
            inp = self.query_one(f"#grid-{key}", Input)
            values, err = parse_grid_axis(inp.value, key.replace("_", "-"))
            inp.set_class(values is None, "-invalid")
            if values is None:
                errors.append(err)
            else:
                grid[key] = values
        for key, label, minimum in TIMING_FIELDS:
            inp = self.query_one(f"#timing-{key}", Input)
            value, err = parse_count(inp.value, label, minimum)
            inp.set_class(value is None, "-invalid")
            if value is None:
                errors.append(err)
            else:
                timing[key] = value
        if errors:
            return None, errors
        return {"grid": grid, "timing": timing}, []

    def _refresh_plan(self) -> None:
        from tui.planning import estimate_seconds

        if not self._ready:
            return
        form, errors = self._form()
        grid_msg = self.query_one("#grid-msg", Static)
        plan = self.query_one("#plan-msg", Static)
        if form is None:
            grid_msg.update(Text("✗ " + errors[0], style="red"))
            plan.update(Text("fix the grid to see the plan", style="dim"))
            self.estimate_s = None
            return
        g = form["grid"]
        cells = [(b, i, o) for b in g["batch"] for i in g["input_len"] for o in g["output_len"]]
        grid_msg.update(Text(f"✓ {len(g['batch'])} × {len(g['input_len'])} × {len(g['output_len'])} = "
                             f"{len(cells)} cells", style="green"))  # fmt: skip
        runs = self.selected_runs() if self.choices else []
        if not self.choices:
            plan.update(Text("checking engines…", style="dim"))
            return
        if not runs:
            plan.update(Text("✗ tick an engine and at least one option combination", style="red"))
            self.estimate_s = None
            return
        total, basis = estimate_seconds(runs, cells, form["timing"], self.rates)
        self.estimate_s = total
        plan.update(Text.assemble((f"{len(runs)} run(s) × {len(cells)} cells = {len(runs) * len(cells)} cells", "bold"),
                                  f"\nabout {human_duration(total)} ({basis})\non {self.device}"))  # fmt: skip

    # --- the spec ----------------------------------------------------------------------------

    def build(self) -> Any:
        """The StudySpec, or raises SpecError with the one-line reason."""
        from engines.spec import SpecError
        from tui.planning import build_study

        form, errors = self._form()
        if form is None:
            raise SpecError(errors[0])
        runs = self.selected_runs()
        if not runs:
            raise SpecError("no engine option selected; tick an engine and one of its combinations")
        device = str(self.query_one("#device", Select).value)
        return build_study(self.base, model=self.query_one("#model", Input).value, runs=runs, grid=form["grid"],
                           timing=form["timing"], name=self.query_one("#name", Input).value, device=device)  # fmt: skip

    def _validated(self) -> Any | None:
        from engines.grid import GridError
        from engines.spec import SpecError
        from tui.commands.run import validate

        try:
            spec = self.build()
            validate(spec)
            return spec
        except (SpecError, GridError) as exc:
            self.notify(str(exc).splitlines()[0], title="cannot start", severity="error")
            return None

    async def action_start(self) -> None:
        if not self.choices:
            self.notify("still checking engines; try again in a moment", severity="warning")
            return
        spec = self._validated()
        if spec is not None:
            await self.app.start_study(spec, self.estimate_s)

    @on(Button.Pressed, "#start")
    async def _start_pressed(self) -> None:
        await self.action_start()

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#load")
    def _load_pressed(self) -> None:
        self.action_load()

    def action_save(self) -> None:
        from engines.spec import SpecError
        from tui.screens.modals import PromptScreen

        try:
            spec = self.build()
        except SpecError as exc:
            self.notify(str(exc), title="cannot save", severity="error")
            return
        stem = (spec.name or "study").replace(" ", "-").replace("/", "-")

        def write(path: str | None) -> None:
            if not path:
                return
            try:
                Path(path).expanduser().write_text(spec.to_json() + "\n")
            except OSError as exc:
                self.notify(f"cannot write {path} ({exc.strerror}); choose another path", severity="error")
                return
            self.notify(f"saved {path}: run it headless with  codebench-tui run --study {path}", title="study saved")

        self.app.push_screen(PromptScreen("Save the study as (JSON)", f"{stem}.json"), write)

    def action_load(self) -> None:
        from tui.screens.modals import PromptScreen

        def read(path: str | None) -> None:
            if path:
                self.load_file(path)

        self.app.push_screen(PromptScreen("Load a study file", "study.json"), read)

    def load_file(self, path: str) -> bool:
        from engines.spec import SpecError, load_study

        try:
            spec = load_study(Path(path).expanduser())
        except SpecError as exc:
            self.notify(str(exc), title="cannot load", severity="error")
            return False
        self.fill(spec)
        self.notify(f"loaded {path}: {len(spec.runs)} run(s), {len(spec.cells())} cells", title="study loaded")
        return True

    def fill(self, spec: Any) -> None:
        """Put a StudySpec into the form; fields the form does not show are kept for the next save/start."""
        data = spec.model_dump()
        self.base = {k: v for k, v in data.items() if k not in ("model", "runs", "grid", "timing", "name", "device")}
        self.query_one("#model", Input).value = spec.model
        self.query_one("#name", Input).value = spec.name or ""
        if spec.device in dict(DEVICES):
            self.query_one("#device", Select).value = spec.device
        if spec.grid is not None:
            for key, _ in GRID_FIELDS:
                self.query_one(f"#grid-{key}", Input).value = axis_text(getattr(spec.grid, key))
        for key, _, _ in TIMING_FIELDS:
            self.query_one(f"#timing-{key}", Input).value = str(getattr(spec.timing, key))
        if self.choices:
            self._apply_runs(list(spec.runs))
        else:
            self.pending_runs = list(spec.runs)
        self._refresh_plan()

    def _apply_runs(self, runs: list[Any]) -> None:
        engines = self.query_one("#engines", SelectionList)
        ok = {c.name for c in self.choices if c.ok}
        engines.deselect_all()
        for r in runs:
            if r.engine in ok:
                engines.select(r.engine)
        offered = {x.key for c in self.choices for x in c.combos if x.ok}
        self.extra_combos = {r.model_dump_json(): r for r in runs if r.model_dump_json() not in offered}
        self._rebuild_combos(select={r.model_dump_json() for r in runs})
        missing = [r.label() for r in runs if r.engine not in ok]
        if missing:
            self.notify(f"not available here: {', '.join(missing)}", severity="warning")

    def palette_commands(self):
        yield ("Setup: reset the form", "Back to the default study on tiny", self._reset)
        for label, value in getattr(self.query_one("#model-pick", Select), "_options", [])[:12]:
            if isinstance(value, str):
                yield (f"Model: {value}", "Use this model for the study", lambda v=value: self._set_model(v))

    def _set_model(self, value: str) -> None:
        self.query_one("#model", Input).value = value

    def _reset(self) -> None:
        self.base, self.extra_combos = {}, {}
        self.query_one("#model", Input).value = "tiny"
        self.query_one("#name", Input).value = ""
        for key, _ in GRID_FIELDS:
            self.query_one(f"#grid-{key}", Input).value = DEFAULTS[key]
        for key, _, _ in TIMING_FIELDS:
            self.query_one(f"#timing-{key}", Input).value = DEFAULTS[key]
        engines = self.query_one("#engines", SelectionList)
        engines.deselect_all()
        if any(c.name == "hf-generate" and c.ok for c in self.choices):
            engines.select("hf-generate")
        self._combo_keys = []
        self.query_one("#combos", SelectionList).deselect_all()
        self._rebuild_combos()
