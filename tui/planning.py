"""The Setup screen's logic as plain functions: model choices, valid engine options, the estimate, the spec."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Callable

from store.safe import LINE, shown

DEFAULT_S_PER_CELL = 20.0  # no history for an engine: a conservative guess per cell
DEFAULT_STARTUP_S = 15.0  # worker spawn, imports and model load per run
AXES = ("precision", "attention", "quant")


def presets() -> list[tuple[str, str]]:
    """(model reference, title) of the architecture presets, where engines.models.presets exists."""
    if importlib.util.find_spec("engines.models.presets") is None:
        return []
    module = importlib.import_module("engines.models.presets")
    try:
        if callable(getattr(module, "names", None)):  # names() + load(name) -> Preset(ref, title)
            return [(p.ref, p.title) for p in map(module.load, module.names())]
        table = getattr(module, "PRESETS", None)
        return [(str(k), str(k)) for k in sorted(table)] if isinstance(table, dict) else []
    except Exception:  # a broken preset file must not take the Setup screen down
        return []


def model_choices(recent: list[str]) -> list[tuple[str, str]]:
    """(label, value) pairs: tiny, the presets, then recent models from the store."""
    out = [("tiny  (embedded, offline)", "tiny")]
    seen = {"tiny"}
    for ref, title in presets():
        if ref not in seen:
            seen.add(ref)
            out.append((f"{ref}  ({title}, random weights)" if title != ref else f"{ref}  (preset)", ref))
    for name in recent:
        if name not in seen:
            seen.add(name)
            out.append((f"{shown(name, LINE)}  (recent)", name))  # the label is shown; the value stays whole
    return out


def check_model_text(model: str) -> tuple[bool, str]:
    from engines.base import SpecError
    from engines.models.refs import check_model

    model = model.strip()
    if not model:
        return False, "type a model: tiny, a model directory, a .gguf file or an HF id (org/name)"
    try:
        kind = check_model(model)
    except SpecError as exc:
        return False, str(exc)
    what = {"embedded": "embedded model, built offline on first use", "dir": "local HF model directory",
            "gguf": "GGUF file (llama.cpp)", "url": "OpenAI-compatible server (engine openai)",
            "hf": "Hugging Face id (must be in the local HF cache: no downloads here)"}  # fmt: skip
    return True, what.get(kind, kind)


@dataclass
class Combo:
    run: Any  # EngineRun
    ok: bool
    reason: str = ""

    @property
    def key(self) -> str:
        return self.run.model_dump_json()


@dataclass
class EngineChoice:
    name: str
    summary: str
    ok: bool
    reason: str = ""
    hint: str = ""
    combos: list[Combo] = field(default_factory=list)


def engine_choices(device: str, check: Callable | None = None) -> list[EngineChoice]:
    """Every engine, available or not (with reason and hint), and its option combinations."""
    from engines import registry
    from engines.study.schema import EngineRun

    check = check or registry.check
    out = []
    for info in registry.ENGINES.values():
        axes = [info.axes.get(a) or (None,) for a in AXES]
        combos = []
        for values in product(*axes):
            run = EngineRun(engine=info.name, **dict(zip(AXES, values)))
            avail = check(run, device)
            combos.append(Combo(run, avail.ok, avail.reason))
        default = combos[0]
        engine_wide = not any(c.ok for c in combos)
        avail = check(default.run, device) if engine_wide else None
        out.append(EngineChoice(info.name, info.summary, not engine_wide, avail.reason if avail else "",
                                avail.hint if avail else "", combos))  # fmt: skip
    return out


def engine_axes(choice: EngineChoice) -> dict[str, list[str]]:
    """The option axes an engine has (spec aside), each with its values in the registry's order."""
    out: dict[str, list[str]] = {}
    for axis in AXES:
        values = list(dict.fromkeys(getattr(c.run, axis) for c in choice.combos))
        if values != [None]:
            out[axis] = values
    return out


def default_picks(choice: EngineChoice) -> dict[str, list[str]]:
    """The engine's first combination that runs here: its defaults where they can."""
    first = next((c for c in choice.combos if c.ok), None)
    return {a: [getattr(first.run, a)] for a in engine_axes(choice)} if first else {a: [] for a in engine_axes(choice)}


def axis_offers(choice: EngineChoice, picks: dict[str, list[str]]) -> dict[str, list[tuple[str, bool, str]]]:
    """Per axis: (value, offered, why not). A value is offered when a combination that runs here has it
    together with values picked on the other axes (any value, where an axis has none picked)."""
    axes = engine_axes(choice)
    out = {}
    for axis, values in axes.items():
        others = [(b, set(picks.get(b) or axes[b])) for b in axes if b != axis]
        offers = []
        for value in values:
            matching = [c for c in choice.combos if getattr(c.run, axis) == value
                        and all(getattr(c.run, b) in ok for b, ok in others)]  # fmt: skip
            ok = any(c.ok for c in matching)
            offers.append((value, ok, "" if ok else next((c.reason for c in matching if c.reason), "")))
        out[axis] = offers
    return out


def engine_runs(choice: EngineChoice, picks: dict[str, list[str]], spec: list[str], device: str,
                check: Callable | None = None) -> tuple[list[Any], list[str]]:  # fmt: skip
    """The runs `engines.registry.expand` builds from the picks (the CLI's --precision/--attention/--quant/
    --spec lists), less the combinations that cannot run here; returns (runs, why each left-out one cannot)."""
    from engines import registry

    missing = [a for a in engine_axes(choice) if not picks.get(a)]
    if missing:
        return [], [f"pick a value for {missing[0]}"]
    runs = registry.expand([choice.name], **{a: list(picks.get(a) or []) or None for a in AXES}, spec=spec or None)
    runnable = {tuple(getattr(c.run, a) for a in AXES): c for c in choice.combos}
    check = check or registry.check
    keep, why = [], []
    for run in runs:
        combo = runnable.get(tuple(getattr(run, a) for a in AXES))
        avail = check(run, device) if run.spec else None  # a draft model or spec option: checked as typed
        reason = combo.reason if combo is not None and not combo.ok else ""
        reason = reason or (avail.reason if avail is not None and not avail.ok else "")
        if combo is None or reason:
            why.append(f"{run.label()}: {reason or 'not offered here'}")
        else:
            keep.append(run)
    return keep, why


def picks_from_runs(choice: EngineChoice, runs: list[Any]) -> tuple[dict[str, list[str]], list[str]]:
    """The picks (and spec values) that select `runs` of this engine, in the registry's order."""
    axes = engine_axes(choice)
    mine = [r for r in runs if r.engine == choice.name]
    default = default_picks(choice)
    picks = {a: [v for v in values if any(getattr(r, a) == v for r in mine)] or default.get(a, [])
             for a, values in axes.items()}  # fmt: skip  (a run that leaves an axis out gets the default)
    spec = list(dict.fromkeys(r.spec for r in mine if r.spec and r.spec != "none"))
    return picks, spec


def parse_grid_axis(text: str, name: str) -> tuple[list[int] | None, str]:
    from engines.study.grid import GridError, parse_axis

    try:
        return parse_axis(text, name, minimum=1), ""
    except GridError as exc:
        return None, str(exc)


def parse_count(text: str, name: str, minimum: int, maximum: int) -> tuple[int | None, str]:
    text = text.strip()
    if len(text) > 12:  # also keeps int() off a 100,000-digit paste
        return None, f"{name}: must be between {minimum} and {maximum:,}"
    try:
        value = int(text)
    except ValueError:
        return None, f"{name}: '{text}' is not a whole number"
    if not minimum <= value <= maximum:
        return None, f"{name}: must be between {minimum} and {maximum:,}"
    return value, ""


def timing_maximum(key: str) -> int:
    """The largest value the study's Timing accepts for KEY (warmup, iters, repeats)."""
    from engines.study.schema import Timing

    return min(m.le for m in Timing.model_fields[key].metadata if getattr(m, "le", None) is not None)


def check_grid_size(grid: dict[str, list[int]]) -> str:
    """'' or the one-line reason the grid is too large to plan (before any list of cells is built)."""
    from engines.study.grid import GridError, check_cells

    try:
        check_cells(len(grid["batch"]) * len(grid["input_len"]) * len(grid["output_len"]))
    except GridError as exc:
        return str(exc)
    return ""


def estimate_seconds(runs: list[Any], cells: list[tuple[int, int, int]], timing: dict[str, int],
                     rates: dict[str, Any]) -> tuple[float, str]:  # fmt: skip
    """A rough total: past pace of each engine where the store has it, else a conservative default."""
    steps = timing.get("warmup", 1) + timing.get("iters", 2) * timing.get("repeats", 3)
    total, measured, guessed = 0.0, set(), set()
    for run in runs:
        rate = rates.get(run.engine)
        startup = rate.load_s if rate and rate.load_s else DEFAULT_STARTUP_S
        if rate and rate.s_per_step:
            total += startup + sum(rate.s_per_step * steps * out for _, _, out in cells)
            measured.add(run.engine)
        else:
            total += startup + DEFAULT_S_PER_CELL * len(cells)
            guessed.add(run.engine)
    if guessed and not measured:
        basis = "default guess: no past runs of these engines"
    elif guessed:
        basis = f"past runs of {', '.join(sorted(measured))}; a guess for {', '.join(sorted(guessed))}"
    else:
        basis = f"from past runs of {', '.join(sorted(measured))}"
    return total, basis


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def build_study(base: dict[str, Any], *, model: str, runs: list[Any], grid: dict[str, list[int]],
                timing: dict[str, int], name: str, device: str, executor: str = "local",
                schedule: str = "interleaved", worker_env: dict[str, str] | None = None,
                skip_predicted_oom: bool = False, load: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """The StudySpec the CLI would build: the same pydantic model, the same validation."""
    from engines.study.schema import build_spec

    data = dict(base)
    data["load"] = load
    data.update(model=model.strip(), runs=[r.model_dump() for r in runs], grid=grid, timing=timing,
                name=name.strip() or None, device=device, executor=executor, schedule=schedule,
                worker_env=worker_env or {}, skip_predicted_oom=skip_predicted_oom)  # fmt: skip
    return build_spec(data)


def parse_load(rate: str, requests: str, slo: str, search: str, burstiness: float = 1.0, attainment: float = 0.99,
               search_axis: str = "concurrency") -> tuple[dict[str, Any] | None, str]:  # fmt: skip
    """Setup's serving fields as the CLI's --request-rate/--requests and --duration/--slo/--search: the study's load section
    (None when every field is empty), or the first problem."""
    import re

    from engines.base import SpecError
    from engines.study.load import MAX_PASS_S, MAX_REQUESTS, parse_duration, parse_rates, parse_slo

    if not (rate.strip() or requests.strip() or slo.strip() or search != "none"):
        return None, ""
    load: dict[str, Any] = {"burstiness": burstiness, "attainment": attainment, "search_axis": search_axis}
    try:
        if rate.strip():
            load["request_rate"] = parse_rates(rate)
        for item in filter(None, (x.strip() for x in requests.split(","))):  # a count, a duration, or both
            if item.isascii() and item.isdigit():
                if not 1 <= int(item) <= MAX_REQUESTS:
                    return None, f"requests: '{item[:20]}' must be a whole number from 1 to {MAX_REQUESTS}"
                load["requests"] = int(item)
            elif re.fullmatch(r"[0-9.]+\s*(us|ms|s|m)", item):
                load["duration_s"] = parse_duration(item, "per pass", MAX_PASS_S)
            else:
                return None, f"per pass: '{item[:20]}' is neither a whole number of requests nor a duration like 30s"
        if slo.strip():
            load["slo"] = parse_slo(slo)
    except SpecError as exc:
        return None, str(exc)
    if search != "none":
        if "slo" not in load:
            return None, "search peak-goodput needs an SLO, e.g. ttft=200ms,itl=50ms"
        load["search"] = search
    return load, ""


def load_texts(load: Any) -> tuple[str, str, str, str]:
    """A study's load section back into Setup's four fields."""
    from engines.study.load import rate_text, slo_text

    if load is None:
        return "", "", "", "none"
    per_pass = ",".join(x for x in (str(load.requests or ""), f"{load.duration_s:g}s" if load.duration_s else "") if x)
    return (",".join(rate_text(r) for r in load.request_rate or []), per_pass,
            slo_text(load.slo) if load.slo else "", load.search or "none")  # fmt: skip


def parse_worker_env(text: str) -> tuple[dict[str, str] | None, str]:
    """'KEY=VALUE KEY2=VALUE' (spaces or commas between) as the CLI's --worker-env, or the first problem."""
    import re

    out: dict[str, str] = {}
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
            return None, f"worker env: '{item[:40]}' is not KEY=VALUE (e.g. OMP_WAIT_POLICY=PASSIVE)"
        out[key] = value
    return out, ""


def worker_env_text(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items())


def axis_text(values: list[int]) -> str:
    return ",".join(str(v) for v in values)
