"""llama.cpp through llama-cpp-python, declared without importing it: GGUF files, quantization, speculation."""

from __future__ import annotations

import importlib.util
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
    layers = run.options.get("n_gpu_layers", 0)
    if not device.startswith("cuda"):
        if isinstance(layers, int) and layers > 0:
            return Availability.no("llama.cpp n_gpu_layers > 0 needs a GPU", "use --device cuda, or leave n_gpu_layers out")
        return Availability.yes()
    if not gpu_build():
        return Availability.no(
            "this llama-cpp-python build is CPU-only",
            'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36',
        )
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
)
