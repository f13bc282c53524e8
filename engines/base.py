"""The one interface every engine adapter implements.

The runner owns warm-up, repeats, timing, OOM handling and telemetry; an adapter only
loads a model and generates. Adapters are imported inside worker processes only, so a
module here may import torch at the top; this module itself must not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar


@dataclass(frozen=True)
class Availability:
    """Whether an engine configuration can run here, and what to do if not."""

    ok: bool
    reason: str = ""
    hint: str = ""  # the exact command that fixes it, e.g. pip install "codebench-tui[hf]"

    @classmethod
    def yes(cls) -> "Availability":
        return cls(True)

    @classmethod
    def no(cls, reason: str, hint: str = "") -> "Availability":
        return cls(False, reason, hint)

    @classmethod
    def unless_refused(cls, check: Callable[[], Any]) -> "Availability":
        """yes, or no with the SpecError's words if `check` raises one (an engine's light option check)."""
        try:
            check()
        except SpecError as exc:
            return cls.no(str(exc))
        return cls.yes()


Rules = Callable[[Any, str], Availability]  # (EngineRun, device) -> can it run here?


@dataclass(frozen=True)
class EngineInfo:
    """What one engine is and can do: each adapter package declares its engines with these, importing nothing
    heavy, and every check asks these fields instead of keeping its own list of engine names."""

    name: str
    target: str  # "module:Class", imported in the worker only
    summary: str
    requires: tuple[str, ...]  # import names (not distribution names: llama_cpp, not llama-cpp-python)
    extra: str  # the pip extra that installs `requires`
    axes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # axis -> allowed values, first is default
    devices: tuple[str, ...] = ("cpu", "cuda")
    rules: Rules | None = None
    install_note: str = ""
    speculation_target: str = ""  # "module:Class" for runs with a speculation value, if not `target` itself
    speculation_options: Callable[[Any], dict[str, Any]] | None = None  # speculation -> adapter options (vllm)
    # How --tp N splits the model: "torchrun" (one HF rank per process), "library" (the library starts its own
    # ranks: vLLM), "gpu-rows" (llama.cpp's row split over GPUs); "" for no tensor parallelism.
    tensor_parallel: str = ""
    builds_presets: bool = False  # loads random-weight presets (MODEL:random)
    reads_gguf: bool = False  # loads a .gguf file given as the model
    serves_url: bool = False  # the model is an OpenAI-compatible server's URL
    takes_load: bool = False  # a server engine: the study's load (request rate, requests, SLOs) applies
    kv_cache: str = "per-sequence"  # "prefix-once": a shared prefix is cached once; "none": no KV cache at all
    reference: str = ""  # the engine whose tokens and speed this one is measured against (shared-prefix engines)
    lossy: bool = False  # its tokens differ from its reference's by design, so identity is not checked

    def install_hint(self) -> str:
        hint = f'pip install "codebench-tui[{self.extra}]"'
        return f"{hint}  ({self.install_note})" if self.install_note else hint


@dataclass
class LoadInfo:
    load_s: float
    device: str  # "cpu", "cuda:0", ...
    dtype: str
    weight_bytes: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerateResult:
    """One minibatch. Timings are the engine's own where it exposes them, else None."""

    tokens: list[list[int]]  # generated token ids per sequence (prompt excluded)
    ttft_s: float | None = None  # start of the call to the first generated token
    step_times_s: list[float] | None = None  # per decode step, if known
    extra: dict[str, Any] = field(default_factory=dict)  # engine metrics, e.g. perf counters


class SpecError(ValueError):
    """Bad input in a study: the message is one line naming the problem and the fix."""


class OutOfMemory(Exception):
    """Raised by adapters (or mapped by the worker) when a cell exhausts memory."""


class Engine:
    """Base class. Subclasses set `name` and implement load/generate/unload."""

    name: ClassVar[str] = ""
    takes_text: ClassVar[bool] = False  # True if prompts must round-trip through text

    def __init__(self, config: dict[str, Any]):
        self.config = config  # the run's engine config: precision, attention, options

    def load(self, model_dir: str, device: str) -> LoadInfo:  # pragma: no cover - interface
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:  # pragma: no cover
        """Greedy, EOS ignored: exactly max_new_tokens tokens for every prompt."""
        raise NotImplementedError

    def unload(self) -> None:
        pass

    # Quality (perplexity, HumanEval); engines that cannot, say so.
    def logprobs(self, window: list[int], context_len: int) -> list[float]:
        """Natural-log probabilities of window[context_len:], each given everything before it."""
        raise NotImplementedError(f"{self.name} exposes no log-probabilities, so it has no perplexity")

    def sample(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        """Completions that may stop early; greedy when temperature is 0."""
        if temperature == 0:
            return self.generate(prompts, max_new_tokens).tokens
        raise NotImplementedError(f"{self.name} cannot sample with a temperature; use temperature 0 (pass@1)")

    def before_cell(self) -> None:
        """Called at the start of every cell, before its timing: a server engine restarts a dead server here."""

    # Memory accounting the runner calls around each cell; engines on a GPU override.
    def reset_peak_memory(self) -> None:
        pass

    def peak_memory_bytes(self) -> int | None:
        return None

    def is_oom(self, exc: BaseException) -> bool:
        """True if `exc` means the cell ran out of memory (the sweep then goes on)."""
        if isinstance(exc, (MemoryError, OutOfMemory)):
            return True
        text = str(exc).lower()
        return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text

    def release_memory(self) -> None:
        import gc

        gc.collect()
