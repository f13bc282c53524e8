"""SQLModel tables. A run is one engine configuration over a grid; runs started together share a group."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 2  # v2: run.notes, cell.flags, noise_floor (store.db migrates v1 files)

# Run statuses. `interrupted` is never written: it is how a `running` row whose process
# died is shown (see store.queries.effective_status).
RUN_STATUSES = ("running", "done", "failed", "cancelled", "interrupted")
CELL_STATUSES = ("done", "oom", "skipped", "crashed", "failed", "cancelled")


class SchemaInfo(SQLModel, table=True):
    __tablename__ = "schema_info"
    key: str = Field(primary_key=True)
    value: str


class RunGroup(SQLModel, table=True):
    __tablename__ = "run_group"
    id: str = Field(primary_key=True)
    name: str | None = None
    created_at: float
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Run(SQLModel, table=True):
    __tablename__ = "run"
    id: str = Field(primary_key=True)  # uuid4 hex; users type a unique prefix
    group_id: str = Field(foreign_key="run_group.id", index=True)
    name: str | None = None
    model: str
    engine: str
    label: str  # engine + options, e.g. "hf-generate bf16 sdpa"
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # EngineRun
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # full StudySpec
    host: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    runtime: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # what the worker reported
    device: str = ""
    status: str = "running"
    error: str = ""
    created_at: float = Field(index=True)
    finished_at: float | None = None
    cells_total: int = 0
    # What the runner decided that changes how figures read, e.g. a fall-back from interleaved to sequential.
    notes: list[str] = Field(default_factory=list, sa_column=Column(JSON, server_default="[]"))
    # Who writes this row: a `running` row whose writer is gone is shown as interrupted.
    owner_host: str = ""
    owner_pid: int = 0
    owner_started: float = 0.0


class CellRow(SQLModel, table=True):
    __tablename__ = "cell"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    idx: int
    batch: int
    input_len: int
    output_len: int
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # extra axes
    status: str
    error: str = ""
    latency_s: float | None = None  # median minibatch latency over repeats
    latency_spread: float | None = None  # (max - min) / median of repeat means
    latency_ci95: float | None = None  # half width of the 95% CI of the mean, seconds
    tokens_per_s: float | None = None  # generated tokens / latency
    ttft_s: float | None = None
    decode_tps: float | None = None
    peak_rss_bytes: int | None = None
    peak_gpu_bytes: int | None = None  # torch allocator peak
    peak_nvml_bytes: int | None = None  # device memory used (NVML), max over the cell
    repeats: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # engine-specific
    # Why a figure may not be trusted: [{"code": "load", "reason": "..."}] (store.flags)
    flags: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, server_default="[]"))
    started_at: float | None = None
    finished_at: float | None = None


class Telemetry(SQLModel, table=True):
    __tablename__ = "telemetry"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    t: float
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    gpus: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))


class Quality(SQLModel, table=True):
    """Quality figures of a run: perplexity, pass@k, greedy agreement with a reference engine."""

    __tablename__ = "quality"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    metric: str
    value: float | None = None  # None: the engine could not produce it; details say why
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: float = 0.0


class NoiseFloor(SQLModel, table=True):
    """A host's A/A noise floor per metric (`codebench-tui noise`): how far two identical runs' ratios stray."""

    __tablename__ = "noise_floor"
    id: int | None = Field(default=None, primary_key=True)
    host_key: str = Field(index=True)  # store.noise.host_key: host and device kind
    metric: str
    floor: float  # relative: a ratio within 1 +/- floor is noise on this host
    cells: int = 0
    ratios: list[float] = Field(default_factory=list, sa_column=Column(JSON))
    run_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    label: str = ""
    host: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: float = 0.0
