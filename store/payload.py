"""A cell's payload, typed once: what the worker reports (CellFinished.result), what the runner adds, and what
RunWriter.add_cell stores.

`metrics["tp"]` of a tensor-parallel cell is written by two engines' code (the HF ranks' merge in
engines/harness/tp.py, vLLM's own ranks in engines/adapters/vllm/engine.py) and read by the cell table and the
CSV export. They once disagreed on a key and vLLM lost its per-GPU breakdown: both now write TPShares and every
reader goes through TPShares.read. Plain dataclass, no store imports: engines import it in their workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypedDict

PerRank = list[int | None]


class CellResult(TypedDict, total=False):
    """A finished cell: the worker writes the first five keys, the runner adds the rest; RunWriter.add_cell
    reads them (tests/test_layers.py checks every writer and the reader against these keys)."""

    repeats: list[dict[str, Any]]  # per timed repeat: latencies, ttft, round, t0/t1, host contention
    peak_rss_bytes: int | None
    peak_gpu_bytes: int | None
    metrics: dict[str, Any]  # "tp": TPShares.to_dict(), "efficiency", speculation figures, "reference", "memory"
    # ("memory": the runner's predicted peak, engines.models.memory.Prediction.to_dict() + capacity_bytes, fits and
    # constant_source, on every cell it could size, skipped ones included; read back through store.memfit)
    started_at: float
    peak_nvml_bytes: int | None  # the runner's NVML sampler, all GPUs summed
    tokens_per_s: float  # the runner, for a matched reference run


@dataclass
class TPShares:
    size: int
    peak_rss_bytes_per_rank: PerRank
    peak_gpu_bytes_per_rank: PerRank | None = None  # None: no GPU (ranks on the CPU)
    nvml_used_bytes_per_gpu: PerRank | None = None  # vLLM on CUDA: its ranks' GPUs as NVML sees them

    @property
    def peak_bytes_per_rank(self) -> PerRank:
        """Per rank: GPU bytes where known, else resident bytes (the CSV's one column)."""
        return self.peak_gpu_bytes_per_rank or self.peak_rss_bytes_per_rank

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.nvml_used_bytes_per_gpu is None:  # only vLLM on CUDA has it
            del out["nvml_used_bytes_per_gpu"]
        return {**out, "peak_bytes_per_rank": self.peak_bytes_per_rank}

    @classmethod
    def read(cls, metrics: Any) -> "TPShares | None":
        """From a stored cell's metrics, old databases included (vLLM cells stored before 2026-12-05 kept their GPU
        figures only under nvml_used_bytes_per_gpu). Stored data may come from an import: a value of the wrong
        type counts as absent."""
        tp = metrics.get("tp") if isinstance(metrics, dict) else None
        if not isinstance(tp, dict):
            return None

        def ranks(key: str) -> PerRank | None:
            value = tp.get(key)
            return list(value) if isinstance(value, list) else None

        rss = ranks("peak_rss_bytes_per_rank") or ranks("peak_bytes_per_rank") or []
        gpu = ranks("peak_gpu_bytes_per_rank") or ranks("nvml_used_bytes_per_gpu")
        size = tp.get("size")
        return cls(size if type(size) is int else len(gpu or rss), rss, gpu, ranks("nvml_used_bytes_per_gpu"))

    def per_gpu(self) -> PerRank:
        return self.peak_gpu_bytes_per_rank or []
