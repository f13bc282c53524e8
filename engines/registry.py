"""Every engine, its options and its availability, listed without importing any of them.

Adapters are named by "module:Class" and imported only in the worker process, so the
dashboard and the CLI can list engines (and say why one cannot run) without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engines.base import Availability, Engine
from engines.spec import EngineRun, SpecError

Rules = Callable[[EngineRun, str], Availability]
AXES = ("precision", "attention", "quant")


@dataclass(frozen=True)
class EngineInfo:
    name: str
    target: str  # "module:Class", imported in the worker only
    summary: str
    requires: tuple[str, ...]  # import names (not distribution names: llama_cpp, not llama-cpp-python)
    extra: str  # the pip extra that installs `requires`
    axes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # axis -> allowed values, first is default
    devices: tuple[str, ...] = ("cpu", "cuda")
    rules: Rules | None = None
    install_note: str = ""

    def install_hint(self) -> str:
        hint = f'pip install "codebench-tui[{self.extra}]"'
        return f"{hint}  ({self.install_note})" if self.install_note else hint


def _hf_rules(run: EngineRun, device: str) -> Availability:
    on_gpu = device.startswith("cuda")
    if run.attention == "flash_attention_2" and not on_gpu:
        return Availability.no("flash_attention_2 needs a CUDA GPU", "use --attention sdpa on the CPU")
    if run.attention == "flash_attention_2" and run.precision == "fp32":
        return Availability.no("flash_attention_2 does not support fp32", "use --precision bf16 or fp16")
    if run.attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return Availability.no("flash_attention_2 needs the flash-attn package", "pip install flash-attn --no-build-isolation")
    return Availability.yes()


def _llamacpp_gpu_build() -> bool:
    """Does the installed llama-cpp-python carry a GPU backend? Looks at its files, imports nothing."""
    spec = importlib.util.find_spec("llama_cpp")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for lib in Path(root).rglob("*ggml*"):
            if any(k in lib.name.lower() for k in ("cuda", "hip", "metal", "vulkan", "sycl")):
                return True
    return False


def _llamacpp_rules(run: EngineRun, device: str) -> Availability:
    layers = run.options.get("n_gpu_layers", 0)
    if not device.startswith("cuda"):
        if isinstance(layers, int) and layers > 0:
            return Availability.no("llama.cpp n_gpu_layers > 0 needs a GPU", "use --device cuda, or leave n_gpu_layers out")
        return Availability.yes()
    if not _llamacpp_gpu_build():
        return Availability.no(
            "this llama-cpp-python build is CPU-only",
            'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36',
        )
    return Availability.yes()


_HF_AXES = {"precision": ("fp32", "bf16", "fp16"), "attention": ("sdpa", "eager", "flash_attention_2")}

ENGINES: dict[str, EngineInfo] = {
    info.name: info
    for info in (
        EngineInfo(
            "hf-generate",
            "engines.hf:HFGenerate",
            "transformers AutoModelForCausalLM.generate (the seeds' HF baseline)",
            ("torch", "transformers"),
            "hf",
            _HF_AXES,
            rules=_hf_rules,
        ),
        EngineInfo(
            "hf-pipeline",
            "engines.hf:HFPipeline",
            "transformers text-generation pipeline (text in, text out)",
            ("torch", "transformers"),
            "hf",
            _HF_AXES,
            rules=_hf_rules,
        ),
        EngineInfo(
            "llama.cpp",
            "engines.llamacpp:LlamaCpp",
            "llama.cpp via llama-cpp-python: GGUF F32/F16 and quantized, real batching",
            ("llama_cpp",),
            "llamacpp",
            {"quant": ("f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m")},
            devices=("cpu", "cuda"),
            rules=_llamacpp_rules,
            install_note="builds llama.cpp from source, about 4 minutes on 2 cores",
        ),
    )
}


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
        if value is not None and value not in allowed:
            if not allowed:
                return Availability.no(f"{info.name} has no {axis} option")
            return Availability.no(f"{info.name} has no {axis} '{value}'", f"use one of: {', '.join(allowed)}")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if kind not in info.devices:
        return Availability.no(f"{info.name} does not run on {kind}", f"use --device {info.devices[0]}")
    missing = missing_modules(info)
    if missing:
        return Availability.no(f"{info.name} needs {', '.join(missing)}, which is not installed", info.install_hint())
    return info.rules(run, device) if info.rules else Availability.yes()


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
            if not any(value in info.axes.get(axis, ()) for info in infos):
                known = sorted({v for info in infos for v in info.axes.get(axis, ())})
                raise SpecError(
                    f"unknown {axis} '{value}' for {', '.join(engines)} (known: {', '.join(known) or 'none'})"
                )
    runs: list[EngineRun] = []
    for info in infos:
        choices: list[list[str | None]] = []
        for axis in AXES:
            allowed = info.axes.get(axis, ())
            given = [v for v in (axes.get(axis) or []) if v in allowed]
            choices.append(given or ([allowed[0]] if allowed else [None]))
        for precision in choices[0]:
            for attention in choices[1]:
                for quant in choices[2]:
                    runs.append(EngineRun(engine=info.name, precision=precision, attention=attention, quant=quant))
    return runs


def load_engine(run: EngineRun) -> Engine:
    """Import and instantiate the adapter: worker processes only."""
    module_name, cls_name = get(run.engine).target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(run.model_dump())
