"""The study spec: one validated, serialisable description shared by the CLI and the dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from engines.base import SpecError
from engines.study.executor import parse_executor
from engines.study.grid import Cell, GridError, cells, check_cells, parse_axis
from engines.study.load import (
    MAX_PASS_S,
    MAX_REQUESTS,
    parse_duration,
    parse_isl_osl,
    parse_rates,
    parse_slo,
    stored_rate,
)
from engines.study.speculation import parse_spec
from store.safe import shown


class Timing(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 1e25 or "3" is not a count
    warmup: int = Field(1, ge=0, le=1000, description="untimed minibatches before each cell")
    iters: int = Field(2, ge=1, le=10_000, description="timed minibatches per repeat")
    repeats: int = Field(3, ge=1, le=10_000, description="repeats per cell; every repeat is stored")


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch: list[int] = [1]
    input_len: list[int] = [32]
    output_len: list[int] = [32]
    # Workload shared-prefix: P (shared prompt) and U (per-completion suffix); batch is N, output_len G.
    shared_len: list[int] | None = None
    suffix_len: list[int] | None = None
    # Workload needle: where the fact is planted, in % of the haystack's tokens (an extra axis of each cell).
    depth: list[int] | None = None
    # Serving: (input, output) length pairs instead of the input x output product.
    isl_osl: list[tuple[int, int]] | None = None

    @field_validator("isl_osl", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> list[tuple[int, int]] | None:
        return None if value is None else parse_isl_osl(value)

    @field_validator("depth", mode="before")
    @classmethod
    def _depth(cls, value: Any) -> list[int] | None:
        try:
            return None if value is None else parse_axis(value, "depth", minimum=0, maximum=100)
        except GridError as exc:
            raise GridError(f"{exc} (--depth takes percentages from 0 to 100, e.g. 0:101:25)") from None

    @field_validator("batch", "input_len", "output_len", "shared_len", "suffix_len", mode="before")
    @classmethod
    def _parse(cls, value: Any, info) -> list[int] | None:
        if value is None and info.field_name in ("shared_len", "suffix_len"):
            return None
        return parse_axis(value, info.field_name.replace("_", "-"), minimum=1)

    @model_validator(mode="after")
    def _size(self) -> "Grid":
        check_cells(self.count())
        return self

    def count(self) -> int:
        """Cells in the grid, without building them."""
        if self.isl_osl is not None:
            return len(self.batch) * len(self.isl_osl)
        n = len(self.batch) * len(self.output_len) * len(self.depth or [0])
        if self.shared_len is None:
            return n * len(self.input_len)
        return n * len(self.shared_len) * len(self.suffix_len or [32])

    def cells(self) -> list[Cell]:
        if self.isl_osl is not None:
            check_cells(self.count())
            return sorted(Cell(b, i, o) for b in self.batch for i, o in self.isl_osl)
        if self.depth is not None:  # needle: depth rides along as an extra axis
            check_cells(self.count())
            return [Cell(c.batch, c.input_len, c.output_len, (("depth", d),))
                    for c in cells(self.batch, self.input_len, self.output_len) for d in self.depth]
        if self.shared_len is None:
            return cells(self.batch, self.input_len, self.output_len)
        # input_len = P + U keeps tables and OOM dominance meaningful; P and U ride along as extra axes.
        out = [Cell(n, p + u, g, (("shared_len", p), ("suffix_len", u)))
               for n in self.batch for p in self.shared_len for u in self.suffix_len or [32] for g in self.output_len]
        return sorted(out, key=Cell.dims)


MAX_TP = 64  # the largest tensor-parallel size a run may ask for


def parse_tp_sizes(values: list[str], name: str = "--tp", example: str = "--tp 1,2") -> list[int]:
    """Tensor-parallel sizes as typed (the CLI's --tp, the Setup screen's field), each once, in order."""
    bad = next((v for v in values if not (v.isascii() and v.isdigit()) or not 1 <= int(v) <= MAX_TP), None)
    if bad is not None:
        raise SpecError(f"{name} takes tensor-parallel sizes from 1 to {MAX_TP}, e.g. {example}; got '{bad}'")
    return list(dict.fromkeys(int(v) for v in values))


class EngineRun(BaseModel):
    """One engine configuration; a study runs each over the whole grid as one run."""

    model_config = ConfigDict(extra="forbid")
    engine: str
    precision: str | None = None
    attention: str | None = None
    quant: str | None = None
    spec: str | None = None  # speculative decoding: none, ngram=N, draft=MODEL (engines.study.speculation)
    tp: int = Field(1, ge=1, le=MAX_TP, description="tensor-parallel size: GPUs (or CPU ranks) one model is split over")
    options: dict[str, Any] = {}

    @field_validator("spec")
    @classmethod
    def _spec(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_spec(value))

    def label(self) -> str:
        # quant "none" is the HF engines' unquantized default: labels leave it out
        parts = [self.engine] + [p for p in (self.precision, self.attention, self.quant) if p and p != "none"]
        parts += [f"spec={self.spec}"] if self.spec else []
        parts += [f"tp={self.tp}"] if self.tp > 1 else []
        parts += [f"{k}={v}" for k, v in sorted(self.options.items())]
        return " ".join(parts)


WORKLOADS = ("synthetic", "humaneval", "jsonl", "shared-prefix", "fim", "needle")
NEEDLE_DEPTHS = [0, 25, 50, 75, 100]  # a needle study's depths when none are given: the usual heat map's rows
DEFAULT_DEPTH = 50  # a needle cell without a depth (a study file written by hand)
SCHEDULES = ("interleaved", "sequential")
MIN_MEM_LIMIT = 64 * 2**20  # below this a worker cannot even import its engine
MAX_RUNS = 256
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class Workload(BaseModel):
    """Where prompts come from. The content type is part of the result: speculation depends on it."""

    model_config = ConfigDict(extra="forbid")
    kind: str = "synthetic"
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True)
    path: str | None = None  # jsonl: a file of {"text": ...} lines
    content: str | None = None  # a label for the content type; default from the kind or the file name

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in WORKLOADS:
            raise ValueError(f"unknown workload '{shown(value, 60)}' (known: synthetic, humaneval, jsonl:FILE, shared-prefix, "
                             "fim, needle)")
        return value

    @model_validator(mode="after")
    def _label(self) -> "Workload":
        self.content = self.content_type()  # stored with every run, so results say what they ran on
        return self

    def content_type(self) -> str:
        if self.content:
            return self.content
        if self.kind == "jsonl":
            return Path(self.path or "jsonl").stem
        return {"humaneval": "code (HumanEval prompts)", "fim": "code (stdlib source, fill-in-the-middle)",
                "needle": "code (stdlib source, needle in a haystack)"}.get(self.kind, "code (stdlib source)")

    def cell_seed(self, batch: int, input_len: int) -> int:
        """Prompts depend on the cell's shape, not its position: every engine sees the same prompts."""
        return self.seed * 1_000_003 + batch * 7919 + input_len


QUALITY_METRICS = ("perplexity", "pass@k")


class QualitySpec(BaseModel):
    """Quality measured with the same engine after its grid: perplexity and HumanEval pass@k."""

    model_config = ConfigDict(extra="forbid")
    metrics: list[str] = ["perplexity"]
    corpus: str = "stdlib:20"  # stdlib[:N files], a text file, or a .jsonl file with a "text" field
    window: int = Field(512, ge=2, le=1_000_000)
    stride: int = Field(256, ge=1, le=1_000_000)
    problems: int | None = Field(None, ge=1, le=164, description="first N HumanEval problems; None = all 164")
    samples: int = Field(1, ge=1, le=10_000, description="completions per problem (n of pass@k)")
    k: list[int] = [1]
    temperature: float = Field(0.0, ge=0, le=100, allow_inf_nan=False)
    max_new_tokens: int = Field(128, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)

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
        if not value or min(value) < 1 or max(value) > 10_000 or len(value) > 100:
            raise ValueError("k values must be from 1 to 10000, e.g. 1,10")
        return sorted(set(value))


class CheckSpec(BaseModel):
    """Greedy agreement of every run with a reference engine on the same prompts."""

    model_config = ConfigDict(extra="forbid")
    reference: EngineRun = EngineRun(engine="hf-generate", precision="fp32", attention="sdpa")
    prompts: int = Field(8, ge=1, le=10_000)
    input_len: int = Field(32, ge=1, le=1_000_000)
    tokens: int = Field(32, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)


SEARCHES = ("peak-goodput",)


class Load(BaseModel):
    """How a server engine's cells send requests (engines/study/load.py); the batch axis is the concurrency."""

    model_config = ConfigDict(extra="forbid")
    # requests/s per cell, an extra axis; None: every request at once (closed loop at the concurrency)
    request_rate: list[float] | None = None
    burstiness: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False, description="gamma shape; 1 = Poisson")
    requests: int | None = Field(None, ge=1, le=MAX_REQUESTS, strict=True,
                                 description="requests per pass; default the concurrency, or unbounded with a duration")
    # seconds per pass: no request is sent after it (those in flight finish); with `requests`, whichever comes first
    duration_s: float | None = None
    slo: dict[str, float] | None = None  # metric -> limit in seconds
    attainment: float = Field(0.99, gt=0, le=1, allow_inf_nan=False, description="share of requests meeting every SLO")
    search: str | None = None  # peak-goodput: the highest concurrency (or rate) whose attainment holds
    search_axis: str = "concurrency"  # or "rate": the request-rate axis, per concurrency

    @field_validator("request_rate", mode="before")
    @classmethod
    def _rates(cls, value: Any) -> list[float] | None:
        return None if value is None else parse_rates(value)

    @field_serializer("request_rate")
    def _json_rates(self, value: list[float] | None) -> list[Any] | None:
        return None if value is None else [stored_rate(r) for r in value]

    @field_validator("duration_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value, "--duration", MAX_PASS_S)

    @field_validator("slo", mode="before")
    @classmethod
    def _slo(cls, value: Any) -> dict[str, float] | None:
        return None if value is None else parse_slo(value)

    @field_validator("search")
    @classmethod
    def _search(cls, value: str | None) -> str | None:
        if value is not None and value not in SEARCHES:
            raise ValueError(f"unknown search '{str(value)[:40]}' (known: {', '.join(SEARCHES)})")
        return value

    @model_validator(mode="after")
    def _search_needs_slo(self) -> "Load":
        if self.search and not self.slo:
            raise ValueError("--search peak-goodput needs --slo (e.g. --slo ttft=200ms,itl=50ms)")
        if self.search_axis not in ("concurrency", "rate"):
            raise ValueError(f"unknown search axis '{str(self.search_axis)[:40]}' (use concurrency or rate)")
        if self.search and self.search_axis == "rate" and not self.request_rate:
            raise ValueError("--search-axis rate needs --request-rate values to search, e.g. 1,2,4,8,16")
        return self


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
    cell_mem_limit_bytes: int | None = Field(None, ge=MIN_MEM_LIMIT, le=2**50)  # 64 MiB .. 1 PiB
    # Cells the memory model (engines.harness.memplan) predicts not to fit are skipped, never started.
    skip_predicted_oom: bool = Field(False, strict=True)  # strict: "yes" or 1 in a study file is an error
    cell_timeout_s: float | None = Field(None, gt=0, le=30 * 86400, allow_inf_nan=False)
    load_timeout_s: float | None = Field(None, gt=0, le=30 * 86400, allow_inf_nan=False)  # per worker start
    quality: QualitySpec | None = None
    check: CheckSpec | None = None
    # Where runs execute: "local" worker processes, or a Ray cluster "ray://HOST:PORT" (engines.study.executor).
    executor: str = "local"
    # interleaved: every run's worker stays loaded and each cell is measured repeat by repeat across the
    # runs, in rotated order; sequential: one run's whole grid after another (engines.harness.runner).
    schedule: str = "interleaved"
    # Environment variables for every worker, on top of the caller's: opt-in settings such as
    # OMP_WAIT_POLICY=PASSIVE. Engines otherwise run at their libraries' defaults.
    worker_env: dict[str, str] = {}
    # Serving studies (openai, serve:*): arrivals, request counts, SLOs and the peak-goodput search.
    load: Load | None = None

    def cells(self) -> list[Cell]:
        grid = self.grid.cells() if self.grid is not None else []
        if self.load is None or self.load.request_rate is None:
            return grid
        check_cells(len(grid) * len(self.load.request_rate))
        return [Cell(c.batch, c.input_len, c.output_len, (*c.extra, ("request_rate", r)))
                for c in grid for r in self.load.request_rate]  # fmt: skip

    @field_validator("runs")
    @classmethod
    def _runs(cls, value: list[EngineRun]) -> list[EngineRun]:
        if not value:
            raise ValueError("a study needs at least one run (e.g. --engine hf-generate)")
        if len(value) > MAX_RUNS:
            raise ValueError(f"{len(value)} runs; at most {MAX_RUNS} (pick fewer option values)")
        return value

    @model_validator(mode="after")
    def _workload_fits_grid(self) -> "StudySpec":
        shared = self.grid is not None and self.grid.shared_len is not None
        if self.workload.kind == "shared-prefix" and self.grid is not None and not shared:
            raise ValueError("workload shared-prefix needs --shared-len (e.g. --shared-len 1024:16385:x2)")
        if shared and self.workload.kind != "shared-prefix":
            raise ValueError("--shared-len/--suffix-len need --workload shared-prefix")
        if self.workload.kind == "jsonl" and not self.workload.path:
            raise ValueError("workload jsonl needs a file: --workload jsonl:FILE")
        needle = self.workload.kind == "needle"
        if self.grid is not None and self.grid.depth is not None and not needle:
            raise ValueError("--depth needs --workload needle")
        if self.grid is not None and needle and self.grid.depth is None:
            self.grid.depth = list(NEEDLE_DEPTHS)
            check_cells(self.grid.count())
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isascii() and value[5:].isdigit()):
            return value
        raise ValueError(f"unknown device '{shown(value, 40)}' (use auto, cpu, cuda or cuda:N)")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value not in SCHEDULES:
            raise ValueError(f"unknown schedule '{shown(value, 40)}' (use {' or '.join(SCHEDULES)})")
        return value

    @field_validator("worker_env")
    @classmethod
    def _worker_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, v in value.items():
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"'{key[:40]}' is not an environment variable name (letters, digits, _)")
            if "\0" in v or len(v) > 4096:
                raise ValueError(f"the value of {key} must be text without NUL bytes, at most 4096 characters")
        return value

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str) -> str:
        parse_executor(value)
        return value

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


MAX_STUDY_BYTES = 10 * 2**20


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is too large for a number")
    return value


def finite_json(text: str) -> Any:
    """json.loads, refusing NaN, Infinity and overflowing numbers (ValueError): no setting means them."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def load_study(path: str | Path) -> StudySpec:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_STUDY_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"study file {p} does not exist (save one from the dashboard or with --save-study)") from None
    except OSError as exc:
        raise SpecError(f"cannot read study file {p} ({exc.strerror or exc}); check the path") from None
    if len(raw) > MAX_STUDY_BYTES:
        raise SpecError(f"study file {p} is over {MAX_STUDY_BYTES >> 20} MiB; a study file is a few kB of JSON")
    try:
        data = finite_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"study file {p} is not UTF-8 text; give a JSON study file (--save-study writes one)") from None
    except RecursionError:
        raise SpecError(f"study file {p} is nested too deeply to be a study; give a JSON study file") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity
        raise SpecError(f"study file {p} is not valid JSON ({str(exc).splitlines()[0][:120]}); fix the file or save "
                        "it again") from None  # fmt: skip
    if not isinstance(data, dict):
        raise SpecError(f"study file {p} must hold a JSON object, not {type(data).__name__}")
    return build_spec(data)
