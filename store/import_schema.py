"""What an importable JSON export may hold, level by level (pydantic, strict).

Rows are checked field by field (extra keys refused); the JSON columns (config, host, spec, runtime,
metrics, ...) are objects whose keys the views read are typed and whose other keys are kept as they are,
under a depth and size cap; a column may be null, which every view reads as empty. Limits are loose for real data and tight enough that every view can show
what passes: times within 1970..2100, counts and bytes within SQLite's integers, figures finite.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator
from pydantic_core import PydanticCustomError

from store.models import CELL_STATUSES, RUN_STATUSES

EXPORT_TAG = "codebench-tui export"
MAX_TIME = 4102444800  # 2100-01-01: later times overflow the date formatting of every view
MAX_BYTES_VALUE = 2**62  # memory sizes: SQLite integers stop at 2**63
FIELD_DEPTH = 16  # nesting inside one JSON column
FIELD_NODES = 1_000_000  # values inside one JSON column
FIGURE_MIN, FIGURE_MAX = 1e-12, 1e12  # a measured figure (s, tok/s): ratios and logs of these stay finite


def shown(v: Any) -> str:
    """A value for an error message: numbers as written (cut), other values by kind, never their text."""
    if isinstance(v, bool) or v is None:
        return "null" if v is None else str(v).lower()
    if isinstance(v, (int, float)):
        text = repr(v)
        return text if len(text) <= 24 else text[:23] + "…"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(v), type(v).__name__)


def _fail(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("import", message, ctx)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _leaf(check: Callable[[Any], Any]) -> PlainValidator:
    return PlainValidator(check)


def Int(lo: int, hi: int) -> Any:
    def check(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise _fail("must be a whole number from {lo} to {hi}, got {got}", lo=lo, hi=hi, got=shown(v))
        if not lo <= v <= hi:
            raise _fail("must be from {lo} to {hi}, got {got}", lo=lo, hi=hi, got=shown(v))
        return v

    return Annotated[int, _leaf(check)]


def Real(lo: float, hi: float) -> Any:
    def check(v: Any) -> float:
        if not _is_number(v) or not math.isfinite(v):
            raise _fail("must be a finite number, got {got}", got=shown(v))
        if not lo <= v <= hi:
            raise _fail("must be from {lo:g} to {hi:g}, got {got}", lo=lo, hi=hi, got=shown(v))
        return v

    return Annotated[float, _leaf(check)]


def _time(v: Any) -> float:
    if not _is_number(v) or not math.isfinite(v) or not 0 <= v <= MAX_TIME:
        raise _fail("must be a Unix time in seconds from 0 to {hi} (1970 to 2100), got {got}", hi=MAX_TIME, got=shown(v))
    return v


def _figure(v: Any) -> float:
    if not _is_number(v) or not math.isfinite(v) or not (v == 0 or FIGURE_MIN <= v <= FIGURE_MAX):
        raise _fail("must be 0 or a number from 1e-12 to 1e12, got {got}", got=shown(v))
    return v


def Text(limit: int) -> Any:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise _fail("must be a string, got {got}", got=shown(v))
        if len(v) > limit:
            raise _fail("must be at most {limit} characters, got {n}", limit=limit, n=len(v))
        return v

    return Annotated[str, _leaf(check)]


def _hex_id(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 32 or any(c not in "0123456789abcdef" for c in v):
        raise _fail("must be a run or group id: 32 lowercase hex digits, got {got}", got=shown(v))
    return v


def shape(v: Any, depth: int = FIELD_DEPTH, nodes: int = FIELD_NODES) -> None:
    """Nesting and size of one JSON value, without recursion (a deep value must not blow the stack)."""
    stack, seen = [(v, 0)], 0
    while stack:
        item, level = stack.pop()
        seen += 1
        if seen > nodes:
            raise _fail("holds more than {n} values; the cap keeps a column readable", n=nodes)
        if isinstance(item, (dict, list)):
            if level >= depth:
                raise _fail("is nested more than {d} levels deep", d=depth)
            stack.extend((x, level + 1) for x in (item.values() if isinstance(item, dict) else item))


def _json_object(v: Any) -> dict:
    if not isinstance(v, dict):
        raise _fail("must be a JSON object, got {got}", got=shown(v))
    shape(v)
    return v


def _json_array(v: Any) -> list:
    if not isinstance(v, list):
        raise _fail("must be a JSON array, got {got}", got=shown(v))
    shape(v)
    return v


Time = Annotated[float, _leaf(_time)]
Figure = Annotated[float, _leaf(_figure)]
HexId = Annotated[str, _leaf(_hex_id)]
JsonObject = Annotated[dict, _leaf(_json_object)]
JsonArray = Annotated[list, _leaf(_json_array)]
Bytes = Int(0, MAX_BYTES_VALUE)
Number = Real(-1e15, 1e15)
Name = Text(200)
Prose = Text(65536)


class Row(BaseModel):
    """A table row: every key known, none missing that the table needs."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Open(BaseModel):
    """An object of a JSON column: the keys the views read are typed, other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _object(cls, v: Any) -> Any:
        return _json_object(v)


class Config(Open):
    engine: Name | None = None
    precision: Name | None = None
    attention: Name | None = None
    quant: Name | None = None
    spec: Name | None = None
    tp: Int(1, 1024) | None = None
    options: JsonObject = {}


class Workload(Open):
    kind: Name | None = None
    content: Text(1000) | None = None


class Spec(Open):
    workload: Workload | None = None
    timing: JsonObject | None = None
    worker_env: JsonObject | None = None


class Gpu(Open):
    name: Text(1000) | None = None
    power_limit_w: Number | None = None


class Host(Open):
    hostname: Text(1000) | None = None  # History reads it with json_extract, as text
    gpus: list[Gpu] = Field([], max_length=4096)
    libraries: JsonObject | None = None
    env: JsonObject | None = None
    mem_total: Bytes | None = None
    cpu_logical: Int(0, 2**24) | None = None


class Runtime(Open):
    versions: JsonObject | None = None
    env: JsonObject | None = None
    schedule: Name | None = None
    dtype: Name | None = None
    load_s: Number | None = None
    weight_bytes: Number | None = None


class Repeat(Open):
    latencies_s: list[Figure] | None = Field(None, max_length=1_000_000)
    ttft_s: list[Figure | None] | None = Field(None, max_length=1_000_000)
    tokens: list[Int(0, 2**40) | None] | None = Field(None, max_length=1_000_000)
    round: Int(0, 2**31) | None = None


class Breakdown(Open):
    draft_ms_per_token: Number
    verify_ms_per_token: Number
    other_ms_per_token: Number


class Reference(Open):
    speedup: Number | None = None
    identical: bool | None = None
    breakdown: Breakdown | None = None
    run_id: Name | None = None
    label: Text(4096) | None = None


class Speculative(Open):
    acceptance_rate: Number | None = None
    mean_accepted_len: Number | None = None
    tokens_per_step: Number | None = None


class Efficiency(Open):
    j_per_token: Number | None = None
    bw_share: Number | None = None
    throttle: list[Name] | None = Field(None, max_length=64)


class TensorParallel(Open):
    peak_gpu_bytes_per_rank: list[Number | None] | None = Field(None, max_length=1024)


class Metrics(Open):
    tp: TensorParallel | None = None
    efficiency: Efficiency | None = None
    reference: Reference | None = None
    speculative: Speculative | None = None
    breakdown: Breakdown | None = None


class Flag(Open):
    code: Name | None = None
    reason: Text(4096) | None = None


class Cell(Row):
    idx: Int(0, 10**7)
    batch: Int(1, 10**6)
    input_len: Int(1, 10**9)
    output_len: Int(1, 10**9)
    params: dict[str, Int(0, 10**9)] | None = Field({}, max_length=64)  # extra grid axes: hashed and sorted
    status: Literal[CELL_STATUSES]  # type: ignore[valid-type]
    error: Prose = ""
    latency_s: Figure | None = None
    latency_spread: Figure | None = None
    latency_ci95: Figure | None = None
    tokens_per_s: Figure | None = None
    ttft_s: Figure | None = None
    decode_tps: Figure | None = None
    peak_rss_bytes: Bytes | None = None
    peak_gpu_bytes: Bytes | None = None
    peak_nvml_bytes: Bytes | None = None
    repeats: list[Repeat] | None = Field([], max_length=100_000)
    metrics: Metrics | None = Metrics()
    flags: list[Flag] | None = Field([], max_length=1000)  # null: stored before flags existed
    started_at: Time | None = None
    finished_at: Time | None = None


class TelemetryGpu(Open):
    node: Name | None = None
    index: Int(0, 2**20) = 0
    mem_total: Bytes | None = None
    mem_used: Bytes | None = None
    util: Real(0, 1e6) | None = None
    power_w: Real(0, 1e7) | None = None


class Sample(Row):
    t: Time
    cpu_percent: Real(0, 1e7) = 0.0
    rss_bytes: Bytes = 0
    gpus: list[TelemetryGpu] | None = Field([], max_length=4096)


class QualityRow(Row):
    metric: Name
    value: Number | None = None
    details: JsonObject | None = {}
    created_at: Time = 0.0


class Group(Row):
    id: HexId
    name: Text(1000) | None = None
    created_at: Time
    spec: Spec | None = Spec()


class RunDoc(Row):
    id: HexId
    group_id: HexId
    name: Text(1000) | None = None
    model: Text(4096)
    engine: Name
    label: Text(4096)
    config: Config | None = Config()
    spec: Spec | None = Spec()
    host: Host | None = Host()
    runtime: Runtime | None = Runtime()
    device: Name = ""
    status: Literal[RUN_STATUSES] = "running"  # type: ignore[valid-type]
    error: Prose = ""
    created_at: Time
    finished_at: Time | None = None
    cells_total: Int(0, 10**7) = 0
    notes: list[Text(4096)] | None = Field([], max_length=1000)  # null: stored before notes existed
    owner_host: Name = ""
    owner_pid: Int(0, 2**31 - 1) = 0
    owner_started: Time = 0.0
    cells: list[Cell] = Field([], max_length=10**6)
    telemetry: list[Sample] = Field([], max_length=10**7)
    quality: list[QualityRow] = Field([], max_length=10_000)


class Document(Row):
    format: Literal[EXPORT_TAG]  # type: ignore[valid-type]
    schema_version: int
    groups: list[Group] = Field([], max_length=100_000)
    runs: list[RunDoc] = Field([], max_length=100_000)
    comparison: Any = None  # derived from the runs; import ignores it
