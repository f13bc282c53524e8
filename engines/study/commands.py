"""Typed commands from the runner to its worker: the other direction of the wire that events.py types.

One JSON object per line on the worker's stdin, {"cmd": NAME, ...fields}; `encode` writes it and `decode`
reads it back into the same class, so the runner's writer and the worker's reader cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Command:
    @property
    def name(self) -> str:
        return _NAME_OF[type(self)]


@dataclass
class Load(Command):
    run_id: str
    run: dict[str, Any]  # EngineRun.model_dump(mode="json")
    model: str
    device: str
    cell_mem_limit_bytes: int | None = None


@dataclass
class RunCell(Command):
    index: int
    batch: int
    input_len: int
    output_len: int
    timing: dict[str, Any]  # Timing.model_dump()
    label: str = ""
    seed: int = 0
    workload: dict[str, Any] | None = None  # Workload.model_dump(mode="json")
    params: dict[str, Any] = field(default_factory=dict)  # the cell's extra axes (shared_len, ...)
    slot: dict[str, Any] | None = None  # interleaving: which repeats of the cell this call measures
    load: dict[str, Any] | None = None  # serving: Load.model_dump(mode="json"); the cell's rate is in params


@dataclass
class Tokens(Command):
    """Greedy tokens for given prompts, or for synthetic ones of batch x input_len: the agreement check."""

    max_new_tokens: int
    prompts: list[list[int]] | None = None
    batch: int = 0
    input_len: int = 0
    seed: int = 0


@dataclass
class Perplexity(Command):
    corpus: str
    window: int
    stride: int


@dataclass
class HumanEval(Command):
    problems: int | None
    samples: int
    seed: int
    temperature: float
    max_new_tokens: int


@dataclass
class Exit(Command):
    pass


_NAME_OF = {Load: "load", RunCell: "cell", Tokens: "tokens", Perplexity: "perplexity", HumanEval: "humaneval",
            Exit: "exit"}  # fmt: skip
_CLASS_OF = {name: cls for cls, name in _NAME_OF.items()}


def to_dict(cmd: Command) -> dict[str, Any]:
    return {"cmd": cmd.name, **asdict(cmd)}


def encode(cmd: Command) -> str:
    return json.dumps(to_dict(cmd))


def from_dict(data: dict[str, Any]) -> Command:
    """The command a decoded line holds; an unknown name or field is a ValueError naming it."""
    name = data.get("cmd")
    cls = _CLASS_OF.get(name)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown worker command {name!r}")
    known = {f.name for f in fields(cls)}
    extra = set(data) - known - {"cmd"}
    if extra:
        raise ValueError(f"worker command {name} has no field {sorted(extra)[0]!r}")
    return cls(**{k: v for k, v in data.items() if k != "cmd"})


def decode(line: str | bytes) -> Command:
    return from_dict(json.loads(line))
