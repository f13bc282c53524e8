"""Typed events that flow from the runner to its subscribers (CLI progress, dashboard, store).

Workers send the same events as JSON lines; `encode`/`decode` are the wire format.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Event:
    run_id: str
    t: float  # time.time() when it happened

    @property
    def kind(self) -> str:
        return _KIND_OF[type(self)]


@dataclass
class RunStarted(Event):
    label: str = ""
    cells_total: int = 0


@dataclass
class WorkerStarted(Event):
    pid: int = 0
    attempt: int = 1


@dataclass
class Loaded(Event):
    load_s: float = 0.0
    device: str = ""
    dtype: str = ""
    weight_bytes: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellStarted(Event):
    index: int = 0
    label: str = ""


@dataclass
class Progress(Event):
    """One minibatch finished inside a cell."""

    index: int = 0
    phase: str = "timed"  # warmup | timed
    done: int = 0
    total: int = 0
    tokens_per_s: float = 0.0


@dataclass
class Requests(Event):
    """A serving cell's requests while a pass runs (every ~0.5 s): counts, and the TTFT and ITL of the requests
    that finished since the last one, in ms (a sample, at most REQUEST_SAMPLES of each)."""

    index: int = 0
    in_flight: int = 0
    done: int = 0
    failed: int = 0
    total: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)


REQUEST_SAMPLES = 64


@dataclass
class CellFinished(Event):
    """A cell reached a final state: done, oom, skipped, crashed, failed or cancelled."""

    index: int = 0
    status: str = "done"
    result: dict[str, Any] = field(default_factory=dict)  # a store.payload.CellResult
    error: str = ""


@dataclass
class Log(Event):
    level: str = "info"
    message: str = ""


@dataclass
class TelemetrySample(Event):
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    gpus: list[dict[str, Any]] = field(default_factory=list)  # {index, mem_used, mem_total, util, power_w}


@dataclass
class GreedyTokens(Event):
    """Answer to a worker's `tokens` command (the greedy agreement check)."""

    prompts: list[list[int]] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)


@dataclass
class QualityResult(Event):
    """A quality figure for the run: perplexity, pass@k, greedy agreement."""

    metric: str = ""
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completions(Event):
    """HumanEval completions from the worker; the parent scores them in the sandbox."""

    samples: list[list[str]] = field(default_factory=list)  # [task_id, completion]
    gen_s: float = 0.0


@dataclass
class RunFinished(Event):
    status: str = "done"  # done | failed | cancelled
    error: str = ""


_KINDS: dict[str, type[Event]] = {
    "run_started": RunStarted,
    "worker_started": WorkerStarted,
    "loaded": Loaded,
    "cell_started": CellStarted,
    "progress": Progress,
    "requests": Requests,
    "cell_finished": CellFinished,
    "log": Log,
    "telemetry": TelemetrySample,
    "greedy_tokens": GreedyTokens,
    "quality": QualityResult,
    "completions": Completions,
    "run_finished": RunFinished,
}
_KIND_OF = {cls: name for name, cls in _KINDS.items()}


def encode(event: Event) -> str:
    return json.dumps({"kind": event.kind, **asdict(event)}, separators=(",", ":"))


def decode(line: str | bytes) -> Event:
    data = json.loads(line)
    cls = _KINDS[data.pop("kind")]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
