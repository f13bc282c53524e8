"""Every engine, its options and its availability, listed without importing any of them.

Adapters are named by "module:Class" and imported only in the worker process, so the
dashboard and the CLI can list engines (and say why one cannot run) without torch.
"""

from __future__ import annotations

import importlib
import importlib.util

from engines.base import Availability, Engine, EngineInfo, SpecError
from engines.measure.hardware import first_gpu, visible_gpus
from engines.models.drafts import check_draft_model
from engines.study.schema import EngineRun
from engines.study.speculation import SPEC_OPTIONS, parse_spec, spec_allowed, spec_options

AXES = ("precision", "attention", "quant", "spec")
OPTIONAL_AXES = ("spec",)  # left out: the run has no value (not the engine's first), so plain runs stay plain
# Where engines are declared, in the order they are listed: every family's engines, the shared-prefix study's last.
DECLARATIONS = (
    "engines.adapters.hf:ENGINES",
    "engines.adapters.llamacpp:ENGINES",
    "engines.adapters.vllm:ENGINES",
    "engines.adapters.openai:ENGINES",
    "engines.adapters.hf:SHARED_PREFIX",
)


def _collect() -> dict[str, EngineInfo]:
    found: dict[str, EngineInfo] = {}
    for where in DECLARATIONS:
        module, _, attr = where.partition(":")
        for info in getattr(importlib.import_module(module), attr):
            if info.name in found:
                raise RuntimeError(f"engine {info.name} is declared twice ({where})")
            found[info.name] = info
    return found


ENGINES: dict[str, EngineInfo] = _collect()


def _fits(axis: str, value: str, allowed: tuple[str, ...]) -> bool:
    if axis == "spec":
        return spec_allowed(value, allowed)
    return value in allowed


def get(name: str) -> EngineInfo:
    try:
        return ENGINES[name]
    except KeyError:
        known = ", ".join(ENGINES)
        raise SpecError(f"unknown engine '{name}' (known: {known}; `codebench-tui engines` lists them)") from None


def missing_modules(info: EngineInfo) -> list[str]:
    return [m for m in info.requires if importlib.util.find_spec(m) is None]


def check(run: EngineRun, device: str) -> Availability:
    """Can `run` execute on `device` ("cpu" or "cuda[:N]") here? Imports nothing heavy."""
    info = get(run.engine)
    for axis in AXES:
        value = getattr(run, axis)
        allowed = info.axes.get(axis, ())
        if value is not None and not _fits(axis, value, allowed):
            if not allowed:
                return Availability.no(f"{info.name} has no {axis} option")
            return Availability.no(f"{info.name} has no {axis} '{value}'", f"use one of: {', '.join(allowed)}")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if kind not in info.devices:
        return Availability.no(f"{info.name} does not run on {kind}", f"use --device {info.devices[0]}")
    missing = missing_modules(info)
    if missing:
        return Availability.no(f"{info.name} needs {', '.join(missing)}, which is not installed", info.install_hint())
    if run.tp > 1:
        split = _split(run, device, info)
        if not split.ok:
            return split
    if run.spec:
        try:
            check_draft_model(parse_spec(run.spec))
            if info.speculation_target:
                spec_options(run.options)
        except SpecError as exc:
            return Availability.no(str(exc))
        if info.speculation_target:  # the speculative adapter takes these options off before the HF engine sees them
            run = run.model_copy(update={"options": {k: v for k, v in run.options.items() if k not in SPEC_OPTIONS}})
    return info.rules(run, device) if info.rules else Availability.yes()


def _split(run: EngineRun, device: str, info: EngineInfo) -> Availability:
    """Can `run` split its model over run.tp devices here?"""
    tp = run.tp
    if tp <= 1:
        return Availability.yes()
    if not info.tensor_parallel:
        splitting = ", ".join(name for name, other in ENGINES.items() if other.tensor_parallel)
        return Availability.no(f"{run.engine} has no tensor parallelism", f"use --tp 1, or one of {splitting}")
    on_gpu = device.startswith("cuda")
    if info.tensor_parallel == "gpu-rows" and not on_gpu:
        return Availability.no("llama.cpp --tp splits a model across GPUs, not CPU cores",
                               "use --device cuda with a CUDA build of llama-cpp-python, or --tp 1")  # fmt: skip
    if on_gpu:
        first, have = first_gpu(device), visible_gpus()
        if first + tp > have:
            return Availability.no(f"--tp {tp} from {device} needs GPUs {first}..{first + tp - 1}, {have} visible",
                                   f"use --tp {max(1, have - first)} or --device cuda:0")  # fmt: skip
    if info.tensor_parallel == "torchrun":
        if run.quant not in (None, "none"):
            return Availability.no(f"{run.engine} cannot split {run.quant} (bitsandbytes/GPTQ) layers over ranks",
                                   "use --quant none with --tp")  # fmt: skip
        if run.spec and run.spec != "none":
            return Availability.no("speculative decoding does not run tensor-parallel", "use --tp 1 with --spec")
        if (run.options.get("compile") or "off") not in ("off", "none", False):
            return Availability.no("compile does not run tensor-parallel in codebench", "drop --opt compile with --tp")
    if info.tensor_parallel == "library":
        given = run.options.get("tensor_parallel_size")
        if given is not None and given != tp:
            return Availability.no(f"--tp {tp} and option tensor_parallel_size={given} disagree",
                                   "give --tp alone")  # fmt: skip
    return Availability.yes()


def expand(engines: list[str], **axes: list[str] | None) -> list[EngineRun]:
    """Engine names x option lists -> one EngineRun per valid combination.

    Each engine takes the listed values of the axes it has (its default where none fits);
    a value that fits no listed engine is an error, so typos never vanish silently.
    """
    infos = [get(name) for name in engines]
    for axis, values in axes.items():
        if axis not in AXES:
            raise SpecError(f"unknown option axis '{axis}'")
        for value in values or []:
            if axis == "spec":
                parse_spec(value)  # a malformed value gets its own reason, not "unknown"
            if not any(_fits(axis, value, info.axes.get(axis, ())) for info in infos):
                known = sorted({v for info in infos for v in info.axes.get(axis, ())})
                raise SpecError(
                    f"unknown {axis} '{value}' for {', '.join(engines)} (known: {', '.join(known) or 'none'})"
                )
    runs: list[EngineRun] = []
    for info in infos:
        choices: list[list[str | None]] = []
        for axis in AXES:
            allowed = info.axes.get(axis, ())
            given = [v for v in (axes.get(axis) or []) if _fits(axis, v, allowed)]
            if axis in OPTIONAL_AXES:
                # The matched baseline comes first, so the runner has it when the speculative runs finish.
                given = ["none"] + [v for v in given if v != "none"] if given else []
            choices.append(given or ([allowed[0]] if allowed and axis not in OPTIONAL_AXES else [None]))
        for precision in choices[0]:
            for attention in choices[1]:
                for quant in choices[2]:
                    for spec in choices[3]:
                        runs.append(EngineRun(engine=info.name, precision=precision, attention=attention, quant=quant,
                                              spec=spec))  # fmt: skip
    return runs


def load_engine(run: EngineRun) -> Engine:
    """Import and instantiate the adapter: worker processes only."""
    info = get(run.engine)
    config = run.model_dump()
    if run.spec and info.speculation_options:
        config["options"] = {**config["options"], **info.speculation_options(parse_spec(run.spec))}
    target = info.speculation_target if run.spec and info.speculation_target else info.target
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(config)
