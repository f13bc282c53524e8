"""What an importable JSON export may hold, level by level (pydantic, strict).

Rows are checked field by field (extra keys refused); the JSON columns (config, host, spec, runtime,
metrics, ...) are objects whose keys the views read are typed and whose other keys are kept as they are,
under a depth and size cap; a column may be null, which every view reads as empty. Limits are loose for
real data and tight enough that every view can show what passes: times within 1970..2100, counts and
bytes within SQLite's integers, figures finite.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, PlainValidator, TypeAdapter
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, TypedDict

from store.models import CELL_STATUSES, RUN_STATUSES

EXPORT_TAG = "codebench-tui export"
MAX_TIME = 4102444800  # 2100-01-01: later times overflow the date formatting of every view
MAX_BYTES_VALUE = 2**62  # memory sizes: SQLite integers stop at 2**63
FIELD_DEPTH = 16  # nesting inside one JSON column
FIELD_NODES = 1_000_000  # values inside one JSON column
FIGURE_MIN, FIGURE_MAX = 1e-12, 1e12  # a measured figure (s, tok/s): ratios and logs of these stay finite
MAX_STRING = 1_000_000
MAX_INT = 10**100
SURROGATE = re.compile("[\ud800-\udfff]")  # SQLite cannot store a lone one; JSON's \\u escapes can make them


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


# Leaf types are pydantic-core's own constraints where they can be (a long telemetry list validates in C).
def Int(lo: int, hi: int) -> Any:
    return Annotated[int, Field(ge=lo, le=hi)]


def Real(lo: float, hi: float) -> Any:
    return Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False)]


def Text(limit: int) -> Any:
    return Annotated[str, Field(max_length=limit)]


def _figure(v: Any) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise _fail("must be a finite number, got {got}", got=shown(v))
    if not (v == 0 or FIGURE_MIN <= v <= FIGURE_MAX):
        raise _fail("must be 0 or from 1e-12 to 1e12, got {got}", got=shown(v))
    return v


def shape(v: Any, depth: int = FIELD_DEPTH, nodes: int = FIELD_NODES) -> None:
    """Nesting, size and values of one JSON column, without recursion (a deep value must not blow the stack):
    whatever is stored must come back out of SQLite and json.dumps."""
    stack, seen = [(v, 0)], 0
    while stack:
        item, level = stack.pop()
        seen += 1
        if seen > nodes:
            raise _fail("holds more than {n} values; the cap keeps a column readable", n=nodes)
        kind = type(item)
        if kind is dict or kind is list:
            if level >= depth:
                raise _fail("is nested more than {d} levels deep", d=depth)
            if kind is dict:
                for key in item:
                    _scalar(key)
            stack.extend((x, level + 1) for x in (item.values() if kind is dict else item))
        else:
            _scalar(item)


def _scalar(v: Any) -> None:
    if why := scalar_problem(v):
        raise _fail(why)


def scalar_problem(v: Any) -> str:
    """Why a string or number cannot be stored and read back; "" if it can."""
    kind = type(v)
    if kind is str:
        if len(v) > MAX_STRING:
            return f"holds a string of {len(v)} characters, more than {MAX_STRING}"
        return "holds a lone UTF-16 surrogate (not text)" if SURROGATE.search(v) else ""
    if kind is float and not math.isfinite(v):
        return "holds a number that is not finite"
    if kind is int and not -MAX_INT <= v <= MAX_INT:
        return "holds an integer too large"
    return ""


def _json_object(v: Any) -> dict:
    if not isinstance(v, dict):
        raise _fail("must be a JSON object, got {got}", got=shown(v))
    shape(v)
    return v


def _column(v: Any) -> Any:
    """A whole JSON column: its size and depth, and the values of keys no type names."""
    if isinstance(v, (dict, list)):
        shape(v)
    return v


Time = Real(0, MAX_TIME)
Figure = Annotated[float, PlainValidator(_figure)]
HexId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
JsonObject = Annotated[dict, PlainValidator(_json_object)]
Column = AfterValidator(_column)  # after the typed keys: their errors name a deeper path
Bytes = Int(0, MAX_BYTES_VALUE)
Number = Real(-1e15, 1e15)
Name = Text(200)
Prose = Text(65536)


FORBID = ConfigDict(extra="forbid", strict=True)  # a table row: every key known
ALLOW = ConfigDict(extra="allow", strict=True)  # a JSON column: the keys the views read typed, others kept
# TypedDicts, not models: validated in pydantic-core without building objects (a long telemetry list is fast).
Opt = NotRequired


class Config(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    engine: Name | None
    precision: Name | None
    attention: Name | None
    quant: Name | None
    spec: Name | None
    tp: Int(1, 1024) | None
    options: JsonObject


class Workload(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    kind: Name | None
    content: Text(1000) | None


class Spec(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    workload: Workload | None
    timing: JsonObject | None
    worker_env: JsonObject | None


class Gpu(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    name: Text(1000) | None
    power_limit_w: Number | None


class Host(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    hostname: Text(1000) | None  # History reads it with json_extract, as text
    gpus: Annotated[list[Gpu], Field(max_length=4096)]
    libraries: JsonObject | None
    env: JsonObject | None
    mem_total: Bytes | None
    cpu_logical: Int(0, 2**24) | None
    cpu_features: Text(1000) | None


class Runtime(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    versions: JsonObject | None
    env: JsonObject | None
    schedule: Name | None
    dtype: Name | None
    load_s: Number | None
    weight_bytes: Number | None


class Repeat(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    latencies_s: Annotated[list[Figure], Field(max_length=1_000_000)] | None
    ttft_s: Annotated[list[Figure | None], Field(max_length=1_000_000)] | None
    tokens: Annotated[list[Int(0, 2**40) | None], Field(max_length=1_000_000)] | None
    round: Int(0, 2**31) | None


class Breakdown(TypedDict):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    draft_ms_per_token: Number
    verify_ms_per_token: Number
    other_ms_per_token: Number


class Reference(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    speedup: Number | None
    identical: bool | None
    breakdown: Breakdown | None
    run_id: Name | None
    label: Text(4096) | None


class Speculative(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    acceptance_rate: Number | None
    mean_accepted_len: Number | None
    tokens_per_step: Number | None


class Efficiency(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    j_per_token: Number | None
    bw_share: Number | None
    throttle: Annotated[list[Name], Field(max_length=64)] | None


PerRank = Annotated[list[Number | None], Field(max_length=1024)] | None


class TensorParallel(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    peak_gpu_bytes_per_rank: PerRank
    nvml_used_bytes_per_gpu: PerRank  # the cell table's fallback for vLLM cells stored before 12-05


class Metrics(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    tp: TensorParallel | None
    efficiency: Efficiency | None
    reference: Reference | None
    speculative: Speculative | None
    breakdown: Breakdown | None


class Flag(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    code: Name | None
    reason: Text(4096) | None


class Cell(TypedDict):
    __pydantic_config__ = FORBID  # type: ignore[misc]
    idx: Int(0, 10**7)
    batch: Int(1, 10**6)
    input_len: Int(1, 10**9)
    output_len: Int(1, 10**9)
    # extra axes: hashed and sorted; a serving cell's request_rate is requests/s or "inf" (unpaced)
    params: Opt[Annotated[dict[str, Int(0, 10**9) | Real(0, 1e6) | Literal["inf"]], Field(max_length=64)] | None]
    status: Literal[CELL_STATUSES]  # type: ignore[valid-type]
    error: Opt[Prose]
    latency_s: Opt[Figure | None]
    latency_spread: Opt[Figure | None]
    latency_ci95: Opt[Figure | None]
    tokens_per_s: Opt[Figure | None]
    ttft_s: Opt[Figure | None]
    decode_tps: Opt[Figure | None]
    peak_rss_bytes: Opt[Bytes | None]
    peak_gpu_bytes: Opt[Bytes | None]
    peak_nvml_bytes: Opt[Bytes | None]
    repeats: Opt[Annotated[list[Repeat] | None, Field(max_length=100_000), Column]]
    metrics: Opt[Annotated[Metrics | None, Column]]
    flags: Opt[Annotated[list[Flag] | None, Field(max_length=1000), Column]]  # null: stored before flags existed
    started_at: Opt[Time | None]
    finished_at: Opt[Time | None]


class TelemetryGpu(TypedDict, total=False):
    __pydantic_config__ = ALLOW  # type: ignore[misc]
    node: Name | None
    index: Int(0, 2**20)
    mem_total: Bytes | None
    mem_used: Bytes | None
    util: Real(0, 1e6) | None
    power_w: Real(0, 1e7) | None


class Sample(TypedDict):
    __pydantic_config__ = FORBID  # type: ignore[misc]
    t: Time
    cpu_percent: Opt[Real(0, 1e7)]
    rss_bytes: Opt[Bytes]
    gpus: Opt[Annotated[list[TelemetryGpu] | None, Field(max_length=4096), Column]]


class QualityRow(TypedDict):
    __pydantic_config__ = FORBID  # type: ignore[misc]
    metric: Name
    value: Opt[Number | None]
    details: Opt[JsonObject | None]
    created_at: Opt[Time]


class Group(TypedDict):
    __pydantic_config__ = FORBID  # type: ignore[misc]
    id: HexId
    name: Opt[Text(1000) | None]
    created_at: Time
    spec: Opt[Annotated[Spec | None, Column]]


class RunDoc(TypedDict):
    __pydantic_config__ = FORBID  # type: ignore[misc]
    id: HexId
    group_id: HexId
    name: Opt[Text(1000) | None]
    model: Text(4096)
    engine: Name
    label: Text(4096)
    config: Opt[Annotated[Config | None, Column]]
    spec: Opt[Annotated[Spec | None, Column]]
    host: Opt[Annotated[Host | None, Column]]
    runtime: Opt[Annotated[Runtime | None, Column]]
    device: Opt[Name]
    status: Opt[Literal[RUN_STATUSES]]  # type: ignore[valid-type]
    error: Opt[Prose]
    created_at: Time
    finished_at: Opt[Time | None]
    cells_total: Opt[Int(0, 10**7)]
    notes: Opt[Annotated[list[Text(4096)] | None, Field(max_length=1000), Column]]  # null: stored before notes existed
    owner_host: Opt[Name]
    owner_pid: Opt[Int(0, 2**31 - 1)]
    owner_started: Opt[Time]
    cells: Opt[Annotated[list[Cell], Field(max_length=10**6)]]
    telemetry: Opt[Annotated[list[Sample], Field(max_length=10**7)]]
    quality: Opt[Annotated[list[QualityRow], Field(max_length=10_000)]]


class Document(TypedDict):
    __pydantic_config__ = FORBID  # type: ignore[misc]
    format: Literal[EXPORT_TAG]  # type: ignore[valid-type]
    schema_version: int
    groups: Opt[Annotated[list[Group], Field(max_length=100_000)]]
    runs: Opt[Annotated[list[RunDoc], Field(max_length=100_000)]]
    comparison: Opt[Any]  # derived from the runs; import ignores it


@functools.cache
def document() -> TypeAdapter:
    """Built on the first import, not when store.export loads (every history command imports it)."""
    return TypeAdapter(Document)
