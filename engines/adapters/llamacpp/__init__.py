"""llama.cpp through llama-cpp-python, declared without importing it: GGUF files, quantization, speculation."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from engines.base import Availability, EngineInfo
from engines.study.speculation import SPEC_PATTERNS


def gpu_build() -> bool:
    """Does the installed llama-cpp-python carry a GPU backend? Looks at its files, imports nothing."""
    spec = importlib.util.find_spec("llama_cpp")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for lib in Path(root).rglob("*ggml*"):
            if any(k in lib.name.lower() for k in ("cuda", "hip", "metal", "vulkan", "sycl")):
                return True
    return False


def _rules(run, device: str) -> Availability:
    from engines.adapters.llamacpp.options import check_options  # light: what needs llama_cpp is checked at load

    layers = run.options.get("n_gpu_layers", 0)
    if not device.startswith("cuda"):
        if isinstance(layers, int) and layers > 0:
            return Availability.no("llama.cpp n_gpu_layers > 0 needs a GPU", "use --device cuda, or leave n_gpu_layers out")
    elif not gpu_build():
        return Availability.no(
            "this llama-cpp-python build is CPU-only",
            'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36',
        )
    return Availability.unless_refused(lambda: check_options(dict(run.options), device))


def _llama_server_rules(run, device: str) -> Availability:
    from engines.adapters.llamacpp.serve import LlamaServer  # light: llama_cpp is not imported

    refused = Availability.unless_refused(lambda: LlamaServer.split_options(dict(run.options)))
    if not refused.ok:
        return refused
    if not shutil.which("cmake") or not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        from engines.adapters.llamacpp import tools  # light: no llama_cpp import

        root = tools.tools_dir()
        if not (root / "build" / "bin" / "llama-server").exists():
            return Availability.no("building llama-server needs cmake and a C++ compiler", "apt-get install cmake g++")
    return Availability.yes()


ENGINES = (
    EngineInfo(
        "llama.cpp",
        "engines.adapters.llamacpp.engine:LlamaCpp",
        "llama.cpp via llama-cpp-python: GGUF F32/F16 and quantized, real batching",
        ("llama_cpp",),
        "llamacpp",
        {"quant": ("f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m"), "spec": SPEC_PATTERNS},
        devices=("cpu", "cuda"),
        rules=_rules,
        install_note="builds llama.cpp from source: minutes (18 measured on 2 busy cores)",
        speculation_target="engines.adapters.llamacpp.speculative:LlamaCppSpeculative",
        tensor_parallel="gpu-rows",
        reads_gguf=True,
    ),
    EngineInfo(
        "serve:llama.cpp",
        "engines.adapters.llamacpp.serve:LlamaServer",
        "llama.cpp's own llama-server, started by codebench on 127.0.0.1: TTFT, TPOT, ITL, E2E, goodput",
        ("llama_cpp",),
        "llamacpp",
        {"quant": ("f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m")},
        devices=("cpu",),
        rules=_llama_server_rules,
        install_note="builds llama.cpp, then llama-server on first use: minutes",
        reads_gguf=True,
        takes_load=True,
    ),
)
