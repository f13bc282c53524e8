"""Setup: model, engines and their valid options, the grid, timing and a name; start, save or load a study.

The form builds the same StudySpec as `codebench-tui run` and checks it with the same preflight.
Engine availability and past timings load in a thread after the first frame.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.lazy import Lazy
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Select, SelectionList, Static
from textual.widgets.selection_list import Selection

from store.safe import LINE, shown
from tui.planning import axis_text, human_duration, load_texts, parse_load, parse_worker_env, worker_env_text
from tui.widgets.field import Field
from tui.widgets.footer import Footer
from tui.widgets.picker import AxisPicker

DEVICES = [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")]
PREDICTED_OOM = [("run them", "run"), ("skip them", "skip")]  # cells the memory model predicts not to fit
SCHEDULES = [("interleaved", "interleaved"), ("sequential", "sequential")]  # runs take turns per repeat, or one after another
GRID_FIELDS = (("batch", "batch sizes"), ("input_len", "input lengths"), ("output_len", "output lengths"))
TIMING_FIELDS = (("warmup", "warm-up", 0), ("iters", "iters", 1), ("repeats", "repeats", 1))
SEARCHES = [("none", "none"), ("peak goodput", "peak-goodput")]
LOAD_FIELDS = (("rate", "req/s", "inf, or 1,2,4,inf"), ("requests", "per pass", "the batch; or 200, 30s"),
               ("slo", "SLO", "ttft=200ms,itl=50ms"))  # fmt: skip
DEFAULTS = {"batch": "1,2,4", "input_len": "32,128", "output_len": "32", "warmup": "1", "iters": "2", "repeats": "3"}


@dataclass
class EngineBlock:
    box: Vertical
    head: Static
    pickers: list[AxisPicker]
    notes: Static


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
        self.kept_load: dict[str, Any] | None = None  # a loaded study's load: burstiness and attainment are kept
        self.pending_runs: list | None = None  # runs of a study loaded before the engines were
        self.picks: dict[str, dict[str, list[str]]] = {}  # engine -> axis -> values ticked
        self.spec_text: dict[str, str] = {}  # engine -> what was typed in its spec field
        self.loaded_runs: list | None = None  # a loaded study's runs the pickers cannot say (options, tp): kept as is
        self.blocks: dict[str, EngineBlock] = {}  # engine -> its option pickers, while ticked
        self._runs: dict[str, tuple[Any, list, list[str]]] = {}  # engine -> (picks key, runs, why some are left out)
        self.estimate_s: float | None = None
        self._ready = False  # the Lazy parts of the form are mounted
        self._unbuilt: Any = None  # engines checked while another screen was shown: the form is built on return

    def compose(self):
        # The model line paints first; the rest mounts right after (Lazy): a blank terminal is what feels slow.
        with VerticalScroll(id="setup-scroll"):
            with Horizontal(id="setup-cols"):
                with Vertical(id="setup-left"):
                    yield Static("Model", classes="section")
                    yield Field("tiny", id="model", compact=True,
                                placeholder="tiny, a model directory, a .gguf file or an HF id")  # fmt: skip
                    yield Static(id="model-msg", classes="msg")
                    with Lazy(Vertical(id="setup-engines")):
                        yield Select([("tiny  (embedded, offline)", "tiny")], value="tiny", id="model-pick",
                                     compact=True, prompt="choose a model", allow_blank=True)  # fmt: skip
                        yield Static("Engines", classes="section")
                        yield SelectionList(id="engines", compact=True)
                        yield Static("checking engines…", id="engine-notes", classes="msg")
                        yield Static("Options  (← → move, space ticks)", id="options-title", classes="section")
                        yield Vertical(id="options")
                with Lazy(Vertical(id="setup-right")):
                    yield Static("Grid  (1,2,4  or  32:129:x2)", classes="section")
                    for key, label in GRID_FIELDS:
                        with Horizontal(classes="field"):
                            yield Label(label, classes="field-label")
                            yield Field(DEFAULTS[key], id=f"grid-{key}", compact=True)
                    yield Static(id="grid-msg", classes="msg")
                    yield Static("Timing per cell", classes="section")
                    for key, label, _ in TIMING_FIELDS:
                        with Horizontal(classes="field"):
                            yield Label(label, classes="field-label")
                            yield Field(DEFAULTS[key], id=f"timing-{key}", compact=True, type="integer")
                    yield Static("Serving  (batch = concurrency)", classes="section")
                    for key, label, hint in LOAD_FIELDS:
                        with Horizontal(classes="field"):
                            yield Label(label, classes="field-label")
                            yield Field("", id=f"load-{key}", compact=True, placeholder=hint)
                    with Horizontal(classes="field"):
                        yield Label("search", classes="field-label")
                        yield Select(SEARCHES, value="none", id="load-search", compact=True, allow_blank=False)
                    yield Static("Study", classes="section")
                    with Horizontal(classes="field"):
                        yield Label("name", classes="field-label")
                        yield Field("", id="name", compact=True, placeholder="optional")
                    with Horizontal(classes="field"):
                        yield Label("device", classes="field-label")
                        yield Select(DEVICES, value="auto", id="device", compact=True, allow_blank=False)
                    with Horizontal(classes="field"):
                        yield Label("tp", classes="field-label")
                        yield Field("1", id="tp", compact=True, placeholder="tensor-parallel sizes: 1 or 1,2")
                    with Horizontal(classes="field"):
                        yield Label("executor", classes="field-label")
                        yield Field("local", id="executor", compact=True, placeholder="local or ray://HOST:PORT")
                    with Horizontal(classes="field"):
                        yield Label("schedule", classes="field-label")
                        yield Select(SCHEDULES, value="interleaved", id="schedule", compact=True, allow_blank=False)
                    with Horizontal(classes="field"):
                        yield Label("pred. OOM", classes="field-label")
                        yield Select(PREDICTED_OOM, value="run", id="predicted-oom", compact=True, allow_blank=False)
                    with Horizontal(classes="field"):
                        yield Label("env", classes="field-label")
                        yield Field("", id="worker-env", compact=True,
                                    placeholder="optional KEY=VALUE")  # fmt: skip
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
        if not self.query("#plan-msg") or not self.query("#options"):  # the Lazy parts are not mounted yet
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
            import gc

            # A second of imports (pydantic, sqlmodel, the engines): a full collection in the middle would
            # hold the GIL and rescan them, stalling the UI (50-150 ms); after, they leave the collector's sight.
            collect = gc.isenabled()
            gc.disable()
            try:
                import engines.models.refs  # noqa: F401  (the model check, typed live, imports it)
                from engines.measure.hardware import resolve_device
                from store.history import engine_rates, recent_models
                from tui.planning import engine_choices, model_choices
            finally:
                gc.freeze()
                if collect:
                    gc.enable()
            device = (override or resolve_device("auto")) if device_choice == "auto" else device_choice
            choices = engine_choices(device, check)
            try:
                with app.database().session() as s:
                    rates, recent = engine_rates(session=s), recent_models(session=s)
            except Exception:  # no usable store: the estimate falls back to the defaults
                rates, recent = {}, []
            from tui.memory_plan import warm

            warm(app.resolved_db_path(), device)  # fitted memory constants, read here and not on each keystroke
            self.post_message(self.Loaded(device, choices, rates, model_choices(recent)))

        self.run_worker(work, thread=True, exclusive=True, group="setup-load", exit_on_error=False)

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.device, self.choices, self.rates = message.device, message.choices, message.rates
        self._runs.clear()
        if self.is_current:
            self._build(message)
        else:  # a study or a replay is on screen: building a form nobody sees would stall its frames
            self._unbuilt = message

    def on_screen_resume(self) -> None:
        if self._unbuilt is not None:
            message, self._unbuilt = self._unbuilt, None
            self._build(message)

    def _build(self, message: Loaded) -> None:
        self._check_model()
        pick = self.query_one("#model-pick", Select)
        current = self.query_one("#model", Input).value.strip()
        pick.set_options([(Text(label), value) for label, value in message.models])  # recent models are data
        if any(v == current for _, v in message.models):
            pick.value = current
        engines = self.query_one("#engines", SelectionList)
        ticked = set(engines.selected) if engines.option_count else {"hf-generate"}
        notes = Text()
        name_w = max((len(c.name) for c in self.choices), default=10) + 2
        with engines.prevent(SelectionList.SelectedChanged):  # the blocks are synced below, once
            engines.clear_options()
            for c in self.choices:
                if c.ok:
                    engines.add_option(Selection(Text.assemble((c.name.ljust(name_w), "bold"), c.summary), c.name,
                                                 c.name in ticked, id=c.name))  # fmt: skip
                else:
                    label = Text.assemble((c.name, "strike"), " " * (name_w - len(c.name)), c.reason)
                    engines.add_option(Selection(label, c.name, False, id=c.name, disabled=True))
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
            self._sync_blocks()
        self._refresh_plan()

    # --- engines and their options -------------------------------------------------------------

    def _choice(self, name: str) -> Any:
        return next(c for c in self.choices if c.name == name)

    def _ticked(self) -> list[str]:
        """Ticked engines that run here, in the registry's order."""
        ticked = set(self.query_one("#engines", SelectionList).selected)
        return [c.name for c in self.choices if c.ok and c.name in ticked]

    def _sync_blocks(self, rebuild: bool = False) -> None:
        """One block of pickers per ticked engine, in the engine list's order; offers follow the picks."""
        from tui.planning import default_picks

        ticked = self._ticked()
        for name in list(self.blocks):
            if name not in ticked:
                self.blocks.pop(name).box.remove()
        if rebuild or any(name not in self.blocks for name in ticked):  # all anew: blocks keep the list's order
            for block in self.blocks.values():
                block.box.remove()
            for name in ticked:
                self.picks.setdefault(name, default_picks(self._choice(name)))
            self.blocks = {name: self._block(self._choice(name)) for name in ticked}
            self.query_one("#options", Vertical).mount_all([b.box for b in self.blocks.values()])
        for name in ticked:
            self._refresh_engine(name)

    def _block(self, choice: Any) -> EngineBlock:
        """Header (engine and its run count), a picker per option axis, the spec field, notes."""
        from engines import registry
        from tui.planning import axis_offers

        name = choice.name
        offers = axis_offers(choice, self.picks[name])
        head, notes = Static(Text(name, style="bold"), classes="opt-head"), Static(classes="opt-notes msg")
        pickers = [AxisPicker(axis, values, self.picks[name].get(axis, []), name=name, classes="picker")
                   for axis, values in offers.items()]  # fmt: skip
        children: list[Any] = [head, *pickers]
        spec_values = registry.ENGINES[name].axes.get("spec") if name in registry.ENGINES else None
        if spec_values:  # free values (ngram=N, draft=MODEL): typed, checked as you type
            field = Field(self.spec_text.get(name, ""), name=name, compact=True, classes="spec-input",
                          placeholder=", ".join(v for v in spec_values if v != "none"))  # fmt: skip
            children.append(Horizontal(Label("spec", classes="spec-label"), field, classes="spec-field"))
        children.append(notes)
        return EngineBlock(Vertical(*children, classes="engine-opts"), head, pickers, notes)

    def engine_runs(self, name: str) -> tuple[list[Any], list[str]]:
        """This engine's runs from its pickers (cached until they change), and why some combinations are left out."""
        from engines.base import SpecError
        from tui.planning import engine_runs

        spec = [v.strip() for v in self.spec_text.get(name, "").split(",") if v.strip() and v.strip() != "none"]
        key = (repr(self.picks.get(name)), tuple(spec), self.device)
        cached = self._runs.get(name)
        if cached is None or cached[0] != key:
            try:
                runs, why = engine_runs(self._choice(name), self.picks.get(name, {}), spec, self.device,
                                        getattr(self.app, "engine_check", None))  # fmt: skip
            except SpecError as exc:
                runs, why = [], [f"✗ {str(exc).splitlines()[0]}"]
            cached = self._runs[name] = (key, runs, why)
        return cached[1], cached[2]

    def _refresh_engine(self, name: str) -> None:
        """Offers, run count and notes of one engine's block."""
        from tui.planning import axis_offers

        block = self.blocks.get(name)
        if block is None:
            return
        offers = axis_offers(self._choice(name), self.picks[name])
        for picker in block.pickers:
            picker.set_values(offers[picker.axis])
        runs, why = self.engine_runs(name)
        head = Text.assemble((name, "bold"), "  → ", (f"{len(runs)} run{'s' if len(runs) != 1 else ''}",
                                                      "bold green" if runs else "bold red"))  # fmt: skip
        block.head.update(head)
        notes = Text()
        for axis, values in offers.items():  # why a value is struck through
            for value, ok, reason in values:
                if not ok and reason:
                    notes.append((reason if value in reason else f"{value}: {reason}") + "\n", style="dim")
        errors = [w for w in why if w.startswith(("✗", "pick a value"))]
        left = [w for w in why if w not in errors]
        for w in errors:
            notes.append(w + "\n", style="red")
        if left:
            reasons = sorted({w.split(": ", 1)[-1] for w in left})
            many = "s" if len(left) != 1 else ""
            notes.append(f"{len(left)} combination{many} left out: {'; '.join(reasons)}", style="dim")
        notes.rstrip()
        block.notes.update(notes)

    @on(SelectionList.SelectedChanged, "#engines")
    def _engines_changed(self) -> None:
        self.loaded_runs = None
        self._sync_blocks()
        self._refresh_plan()

    @on(AxisPicker.Changed)
    def _picked(self, event: AxisPicker.Changed) -> None:
        name = event.picker.name or ""
        self.picks.setdefault(name, {})[event.picker.axis] = list(event.picker.selected)
        self.loaded_runs = None
        self._refresh_engine(name)
        self._refresh_plan()

    def option_problems(self) -> list[str]:
        """A ticked engine whose pickers say nothing that can run: a bad spec value, an empty option row."""
        if self.loaded_runs is not None:
            return []
        out = []
        for name in self._ticked():
            runs, why = self.engine_runs(name)
            bad = [w.lstrip("✗ ") for w in why if w.startswith(("✗", "pick a value"))]
            if bad or not runs:
                out.append(f"{name}: {bad[0] if bad else 'no combination of the picked options runs here'}")
        return out

    def selected_runs(self) -> list[Any]:
        """The study's runs: the loaded study's own while the pickers are untouched, else the pickers'."""
        if self.loaded_runs is not None:
            return list(self.loaded_runs)
        return [run for name in self._ticked() for run in self.engine_runs(name)[0]]

    # --- model -------------------------------------------------------------------------------

    @on(Select.Changed, "#model-pick")
    def _model_picked(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            model = self.query_one("#model", Input)
            if model.value != event.value:
                model.value = event.value

    @on(Select.Changed, "#schedule")
    @on(Select.Changed, "#predicted-oom")
    def _schedule_changed(self) -> None:
        self._refresh_plan()

    @on(Select.Changed, "#device")
    def _device_changed(self, event: Select.Changed) -> None:
        if self.choices:
            self._load_choices(str(event.value))

    def _check_model(self) -> bool:
        from tui.planning import check_model_text

        ok, msg = check_model_text(self.query_one("#model", Input).value)
        msg = shown(msg, LINE)  # it may quote the model path
        self.query_one("#model-msg", Static).update(Text(("✓ " if ok else "✗ ") + msg, style="green" if ok else "red"))
        self.query_one("#model", Input).set_class(not ok, "-invalid")
        return ok

    # --- validation, as you type -----------------------------------------------------------

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if event.input.id == "model" and self.choices:
            self._check_model()
        if event.input.has_class("spec-input") and event.input.name:
            self.spec_text[event.input.name] = event.value
            self.loaded_runs = None
            self._refresh_engine(event.input.name)
        self._refresh_plan()

    def _form(self) -> tuple[dict[str, Any] | None, list[str]]:
        """The grid and timing parsed, or the first problem per field."""
        from tui.planning import check_grid_size, parse_count, parse_grid_axis, timing_maximum

        errors, grid, timing = [], {}, {}
        for key, _ in GRID_FIELDS:
            inp = self.query_one(f"#grid-{key}", Input)
            values, err = parse_grid_axis(inp.value, key.replace("_", "-"))
            inp.set_class(values is None, "-invalid")
            if values is None:
                errors.append(err)
            else:
                grid[key] = values
        if len(grid) == len(GRID_FIELDS):
            err = check_grid_size(grid)
            errors += [err] if err else []
        for key, label, minimum in TIMING_FIELDS:
            inp = self.query_one(f"#timing-{key}", Input)
            value, err = parse_count(inp.value, label, minimum, timing_maximum(key))
            inp.set_class(value is None, "-invalid")
            if value is None:
                errors.append(err)
            else:
                timing[key] = value
        tp, err = _tp_sizes(self.query_one("#tp", Input))
        errors += [err] if err else []
        executor, err = _executor(self.query_one("#executor", Input))
        errors += [err] if err else []
        env_field = self.query_one("#worker-env", Input)
        worker_env, err = parse_worker_env(env_field.value)
        env_field.set_class(worker_env is None, "-invalid")
        errors += [err] if err else []
        fields = [self.query_one(f"#load-{key}", Input) for key, _, _ in LOAD_FIELDS]
        kept = self.kept_load or {}
        load, err = parse_load(*(f.value for f in fields), str(self.query_one("#load-search", Select).value),
                               kept.get("burstiness", 1.0), kept.get("attainment", 0.99),
                               kept.get("search_axis", "concurrency"))  # fmt: skip
        for f in fields:
            f.set_class(bool(err) and f.value.strip() != "", "-invalid")
        errors += [err] if err else []
        if errors:
            return None, errors
        return {"grid": grid, "timing": timing, "tp": tp, "executor": executor, "worker_env": worker_env,
                "load": load}, []  # fmt: skip

    def _refresh_plan(self) -> None:
        from tui.planning import estimate_seconds

        if not self._ready:
            return
        form, errors = self._form()
        grid_msg = self.query_one("#grid-msg", Static)
        plan = self.query_one("#plan-msg", Static)
        if form is None:
            grid_msg.update(Text("✗ " + shown(errors[0], LINE), style="red"))  # echoes what was typed or loaded
            plan.update(Text("fix the field marked in red to see the plan", style="dim"))
            self.estimate_s = None
            return
        g = form["grid"]
        cells = [(b, i, o) for b in g["batch"] for i in g["input_len"] for o in g["output_len"]]
        grid_msg.update(Text(f"✓ {len(g['batch'])} × {len(g['input_len'])} × {len(g['output_len'])} = "
                             f"{len(cells)} cells", style="green"))  # fmt: skip
        runs = [r.model_copy(update={"tp": t}) for r in self.selected_runs() for t in form["tp"]] if self.choices else []
        if not self.choices:
            plan.update(Text("checking engines…", style="dim"))
            return
        problems = self.option_problems()
        if problems:
            plan.update(Text("✗ " + shown(problems[0], LINE), style="red"))
            self.estimate_s = None
            return
        if not runs:
            plan.update(Text("✗ tick an engine and pick a value on each of its option rows", style="red"))
            self.estimate_s = None
            return
        total, basis = estimate_seconds(runs, cells, form["timing"], self.rates)
        schedule = str(self.query_one("#schedule", Select).value)
        env = shown(worker_env_text(form["worker_env"]), LINE)
        self.estimate_s = total
        loaded = "\nruns as loaded from the study file (pick options to replace them)" if self.loaded_runs else ""
        from tui.memory_plan import setup_line

        memory = setup_line(self.query_one("#model", Input).value, runs, cells, self.device,
                            self.base.get("cell_mem_limit_bytes"), self.app.resolved_db_path(), schedule)  # fmt: skip
        plan.update(Text.assemble((f"{len(runs)} run(s) × {len(cells)} cells = {len(runs) * len(cells)} cells", "bold"),
                                  f"\nabout {human_duration(total)} ({basis})\non {self.device}"
                                  + ("" if form["executor"] == "local" else f" via {shown(form['executor'], LINE)}")
                                  + (f", {schedule}" if len(runs) > 1 else "") + (f"\nworker env: {env}" if env else "")
                                  + (f"\n{shown(memory, LINE)}" if memory else ""),
                                  (loaded, "italic")))  # fmt: skip

    # --- the spec ----------------------------------------------------------------------------

    def build(self) -> Any:
        """The StudySpec, or raises SpecError with the one-line reason."""
        from engines.base import SpecError
        from tui.planning import build_study

        form, errors = self._form()
        if form is None:
            raise SpecError(errors[0])
        problems = self.option_problems()
        if problems:
            raise SpecError(problems[0])
        runs = [r.model_copy(update={"tp": t}) for r in self.selected_runs() for t in form["tp"]]
        if not runs:
            raise SpecError("no run selected; tick an engine and pick a value on each of its option rows")
        device = str(self.query_one("#device", Select).value)
        return build_study(self.base, model=self.query_one("#model", Input).value, runs=runs, grid=form["grid"],
                           timing=form["timing"], name=self.query_one("#name", Input).value, device=device,
                           executor=form["executor"], schedule=str(self.query_one("#schedule", Select).value),
                           worker_env=form["worker_env"], load=form["load"],
                           skip_predicted_oom=self.query_one("#predicted-oom", Select).value == "skip")  # fmt: skip

    async def _validated(self) -> tuple[Any, Any] | None:
        """(spec, connected executor), or None after saying why; the preflight runs in a thread (a Ray
        cluster can take seconds to answer) so the screen keeps drawing."""
        from engines.base import SpecError
        from engines.harness.preflight import preflight
        from engines.study.grid import GridError

        try:
            spec = self.build()
            return spec, await asyncio.to_thread(preflight, spec)
        except (SpecError, GridError) as exc:
            self.notify(str(exc).splitlines()[0], title="cannot start", severity="error")
            return None

    async def action_start(self) -> None:
        if not self.choices:
            self.notify("still checking engines; try again in a moment", severity="warning")
            return
        checked = await self._validated()
        if checked is not None:
            spec, executor = checked
            await self.app.start_study(spec, self.estimate_s, executor)

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
        from engines.base import SpecError
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
            from store.db import default_db_path
            from tui.errors import UsageError
            from tui.outputs import write_atomic

            try:
                write_atomic(path, spec.to_json() + "\n", self.app.resolved_db_path() or default_db_path(), "save to")
            except UsageError as exc:
                self.notify(str(exc), title="cannot save", severity="error")
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
        from engines.base import SpecError
        from engines.study.schema import load_study

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
        self.base = {k: v for k, v in data.items()
                     if k not in ("model", "runs", "grid", "timing", "name", "device", "executor", "schedule",
                                  "worker_env", "skip_predicted_oom", "load")}  # fmt: skip
        self.kept_load = spec.load.model_dump() if spec.load else None  # burstiness, attainment, axis: not shown
        for (key, _, _), text in zip(LOAD_FIELDS, load_texts(spec.load)):
            self.query_one(f"#load-{key}", Input).value = text
        self.query_one("#load-search", Select).value = load_texts(spec.load)[3]
        self.query_one("#schedule", Select).value = spec.schedule
        self.query_one("#predicted-oom", Select).value = "skip" if spec.skip_predicted_oom else "run"
        self.query_one("#worker-env", Input).value = worker_env_text(spec.worker_env)
        self.query_one("#tp", Input).value = ",".join(str(t) for t in dict.fromkeys(r.tp for r in spec.runs)) or "1"
        self.query_one("#executor", Input).value = spec.executor
        self.query_one("#model", Input).value = spec.model
        self.query_one("#name", Input).value = spec.name or ""
        if spec.device in dict(DEVICES):
            self.query_one("#device", Select).value = spec.device
        if spec.grid is not None:
            for key, _ in GRID_FIELDS:
                self.query_one(f"#grid-{key}", Input).value = axis_text(getattr(spec.grid, key))
        for key, _, _ in TIMING_FIELDS:
            self.query_one(f"#timing-{key}", Input).value = str(getattr(spec.timing, key))
        # The tp field says the sizes; the pickers get each configuration once.
        runs = list({r.model_copy(update={"tp": 1}).model_dump_json(): r.model_copy(update={"tp": 1})
                     for r in spec.runs}.values())  # fmt: skip
        if self.choices and self._unbuilt is None:
            self._apply_runs(runs)
        else:
            self.pending_runs = runs
        self._refresh_plan()

    def _apply_runs(self, runs: list[Any]) -> None:
        """Tick the engines of `runs` and set their pickers; runs the pickers cannot say are kept as loaded."""
        from tui.planning import picks_from_runs

        engines = self.query_one("#engines", SelectionList)
        ok = {c.name for c in self.choices if c.ok}
        with engines.prevent(SelectionList.SelectedChanged):
            engines.deselect_all()
            for r in runs:
                if r.engine in ok:
                    engines.select(r.engine)
        for name in self._ticked():
            self.picks[name], spec = picks_from_runs(self._choice(name), runs)
            self.spec_text[name] = ",".join(spec)
        self._runs.clear()
        self._sync_blocks(rebuild=True)
        self.loaded_runs = None
        picked = self.selected_runs()
        mine = [r for r in runs if r.engine in ok]
        self.loaded_runs = None if picked == mine else mine
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
        self.base, self.loaded_runs = {}, None
        self.picks.clear()
        self.spec_text.clear()
        self._runs.clear()
        self.query_one("#model", Input).value = "tiny"
        self.query_one("#name", Input).value = ""
        self.query_one("#schedule", Select).value = "interleaved"
        self.query_one("#predicted-oom", Select).value = "run"
        self.query_one("#worker-env", Input).value = ""
        self.kept_load = None
        for key, _, _ in LOAD_FIELDS:
            self.query_one(f"#load-{key}", Input).value = ""
        self.query_one("#load-search", Select).value = "none"
        for key, _ in GRID_FIELDS:
            self.query_one(f"#grid-{key}", Input).value = DEFAULTS[key]
        for key, _, _ in TIMING_FIELDS:
            self.query_one(f"#timing-{key}", Input).value = DEFAULTS[key]
        engines = self.query_one("#engines", SelectionList)
        with engines.prevent(SelectionList.SelectedChanged):
            engines.deselect_all()
            if any(c.name == "hf-generate" and c.ok for c in self.choices):
                engines.select("hf-generate")
        self._sync_blocks(rebuild=True)
        self._refresh_plan()


def _tp_sizes(field: Input) -> tuple[list[int], str]:
    """The tp field: tensor-parallel sizes applied to every run, as the CLI's --tp."""
    from engines.base import SpecError
    from engines.study.schema import parse_tp_sizes

    values = [v.strip() for v in field.value.split(",") if v.strip()] or ["1"]
    try:
        sizes, problem = parse_tp_sizes(values, "tp", "1,2"), ""
    except SpecError as exc:
        sizes, problem = [], str(exc)
    field.set_class(bool(problem), "-invalid")
    return sizes, problem


def _executor(field: Input) -> tuple[str, str]:
    from engines.study.executor import parse_executor

    value = field.value.strip() or "local"
    try:
        parse_executor(value)
    except ValueError as exc:  # SpecError; engines.study.schema (pydantic) stays unimported before the first frame
        field.set_class(True, "-invalid")
        return "", str(exc)
    field.set_class(False, "-invalid")
    return value, ""
