"""The study spec: one validated, serialisable description shared by the CLI and the dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engines.grid import Cell, GridError, cells, parse_axis


class SpecError(ValueError):
    """Bad input in a study: the message is one line naming the problem and the fix."""


class Timing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup: int = Field(1, ge=0, description="untimed minibatches before each cell")
    iters: int = Field(2, ge=1, description="timed minibatches per repeat")
    repeats: int = Field(3, ge=1, description="repeats per cell; every repeat is stored")


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch: list[int] = [1]
    input_len: list[int] = [32]
    output_len: list[int] = [32]

    @field_validator("batch", "input_len", "output_len", mode="before")
    @classmethod
    def _parse(cls, value: Any, info) -> list[int]:
        return parse_axis(value, info.field_name.replace("_", "-"), minimum=1)

    def cells(self) -> list[Cell]:
        return cells(self.batch, self.input_len, self.output_len)


class EngineRun(BaseModel):
    """One engine configuration; a study runs each over the whole grid as one run."""

    model_config = ConfigDict(extra="forbid")
    engine: str
    precision: str | None = None
    attention: str | None = None
    quant: str | None = None
    options: dict[str, Any] = {}

    def label(self) -> str:
        parts = [self.engine] + [p for p in (self.precision, self.attention, self.quant) if p]
        parts += [f"{k}={v}" for k, v in sorted(self.options.items())]
        return " ".join(parts)


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "synthetic"
    seed: int = 0

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ("synthetic",):
            raise ValueError(f"unknown workload '{value}' (known: synthetic)")
        return value

    def cell_seed(self, batch: int, input_len: int) -> int:
        """Prompts depend on the cell's shape, not its position: every engine sees the same prompts."""
        return self.seed * 1_000_003 + batch * 7919 + input_len


QUALITY_METRICS = ("perplexity", "pass@k")


class QualitySpec(BaseModel):
    """Quality measured with the same engine after its grid: perplexity and HumanEval pass@k."""

    model_config = ConfigDict(extra="forbid")
    metrics: list[str] = ["perplexity"]
    corpus: str = "stdlib:20"  # stdlib[:N files], a text file, or a .jsonl file with a "text" field
    window: int = Field(512, ge=2)
    stride: int = Field(256, ge=1)
    problems: int | None = Field(None, ge=1, le=164, description="first N HumanEval problems; None = all 164")
    samples: int = Field(1, ge=1, description="completions per problem (n of pass@k)")
    k: list[int] = [1]
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(128, ge=1)
    seed: int = 0

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if m not in QUALITY_METRICS]
        if bad or not value:
            raise ValueError(f"unknown quality metric '{bad[0] if bad else ''}' (known: perplexity, pass@k)")
        return value

    @field_validator("k")
    @classmethod
    def _k(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1:
            raise ValueError("k values must be >= 1, e.g. 1,10")
        return sorted(set(value))


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    model: str = "tiny"
    device: str = "auto"
    runs: list[EngineRun]
    grid: Grid | None = Grid()  # None: quality only, no speed cells
    timing: Timing = Timing()
    workload: Workload = Workload()
    # Address space the worker may add after loading (RLIMIT_AS): simulates a smaller host.
    cell_mem_limit_bytes: int | None = Field(None, gt=0)
    cell_timeout_s: float | None = Field(None, gt=0)
    quality: QualitySpec | None = None

    def cells(self) -> list[Cell]:
        return self.grid.cells() if self.grid is not None else []

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"unknown device '{value}' (use auto, cpu, cuda or cuda:N)")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def build_spec(data: dict[str, Any]) -> StudySpec:
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_first_error(exc)) from None
    except GridError as exc:
        raise SpecError(str(exc)) from None


def load_study(path: str | Path) -> StudySpec:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"study file {p} does not exist (save one from the dashboard or with --save-study)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(f"study file {p} is not valid JSON ({exc}); fix the file or save it again") from None
    if not isinstance(data, dict):
        raise SpecError(f"study file {p} must hold a JSON object")
    return build_spec(data)
