"""What else the machine was doing while a repeat was timed: read by the worker at both ends of each repeat.

Snapshots, not a sampling thread: a thread would compete with the engine for the cores it measures.
Between two snapshots: CPU used by processes other than this worker's (the whole machine's busy time
minus our process tree's), CPU steal time where the kernel reports it, the CPU clock, and per GPU the
slowing clock-event reasons, the SM clock and other processes holding the GPU. store.flags turns
these into the flags a cell carries.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from engines.measure.gpu_meter import reason_names


def _busy(t: Any) -> float:
    """Seconds the CPUs spent on work (steal, idle and iowait excluded; guest time is inside user)."""
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class HostMeter:
    """`snapshot()` at the start and end of a timed repeat; `between(a, b)` says what happened in between."""

    def __init__(self, root_pid: int | None = None, gpu_indices: list[int] | None = None, *also: int) -> None:
        self.root = psutil.Process(root_pid or os.getpid())
        self.also = [p for p in also if p]
        self.gpu_indices = gpu_indices or []
        self.peers: list[int] = []  # the study's other workers: idle while this one runs, so not GPU sharers
        self._nv = None
        self._handles: list[Any] = []
        if self.gpu_indices:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nv = pynvml
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.gpu_indices]
            except Exception:
                self._handles = []

    def _trees(self, pids: list[int]) -> list[psutil.Process]:
        procs = []
        for pid in pids:
            try:
                p = self.root if pid == self.root.pid else psutil.Process(pid)
                procs += [p, *p.children(recursive=True)]
            except psutil.Error:
                continue
        return procs

    def _own_cpu_s(self, procs: list[psutil.Process]) -> tuple[float, set[int]]:
        total, pids = 0.0, set()
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
                pids.add(p.pid)
            except psutil.Error:
                continue
        return total, pids

    def _gpus(self, own: set[int], peers: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
        nv, out = self._nv, []
        for index, h in zip(self.gpu_indices, self._handles):
            g: dict[str, Any] = {"index": index}
            try:
                fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
                g["throttle"] = reason_names(fn(h))
            except Exception:
                pass
            try:
                g["sm_mhz"] = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
            except Exception:
                pass
            try:
                pids = {p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(h)}
                # NVML reports host pids: where none of ours shows up (a container), others cannot be told apart.
                if pids & own:
                    g["other_pids"] = sorted(pids - own - peers)
            except Exception:
                pass
            out.append(g)
        return out

    def _own_processes(self) -> list[psutil.Process]:
        return self._trees([self.root.pid, *self.also])

    def snapshot(self) -> dict[str, Any]:
        procs = self._own_processes()
        own_s, pids = self._own_cpu_s(procs)
        cpu = psutil.cpu_times()
        snap: dict[str, Any] = {"t": time.monotonic(), "busy_s": _busy(cpu), "steal_s": getattr(cpu, "steal", None),
                                "own_s": own_s}  # fmt: skip
        try:
            freq = psutil.cpu_freq()
            snap["cpu_mhz"] = round(freq.current) if freq and freq.current else None
        except Exception:  # noqa: BLE001 - not every platform reports it
            snap["cpu_mhz"] = None
        if self._handles:
            peers = {p.pid for p in self._trees(self.peers)} if self.peers else set()
            snap["gpus"] = self._gpus(pids, peers)
        return snap

    @staticmethod
    def between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Cores used by us and by others, steal as a share of all CPU time, clocks and GPU state at both ends."""
        wall = max(b["t"] - a["t"], 1e-9)
        cores = psutil.cpu_count() or 1
        own = max(0.0, b["own_s"] - a["own_s"]) / wall
        others = max(0.0, (b["busy_s"] - a["busy_s"]) / wall - own)
        out: dict[str, Any] = {"wall_s": round(wall, 6), "own_cores": round(own, 3), "other_cores": round(others, 3),
                               "cores": cores}  # fmt: skip
        if a.get("steal_s") is not None and b.get("steal_s") is not None:
            out["steal_share"] = round(max(0.0, b["steal_s"] - a["steal_s"]) / (wall * cores), 4)
        if a.get("cpu_mhz") and b.get("cpu_mhz"):
            out["cpu_mhz"] = [a["cpu_mhz"], b["cpu_mhz"]]
        gpus = []
        for ga, gb in zip(a.get("gpus") or [], b.get("gpus") or []):
            g: dict[str, Any] = {"index": gb["index"]}
            throttle = sorted(set(ga.get("throttle") or []) | set(gb.get("throttle") or []))
            if throttle:
                g["throttle"] = throttle
            if ga.get("sm_mhz") is not None and gb.get("sm_mhz") is not None:
                g["sm_mhz"] = [ga["sm_mhz"], gb["sm_mhz"]]
            others = sorted(set(ga.get("other_pids") or []) | set(gb.get("other_pids") or []))
            if others:
                g["other_pids"] = others
            gpus.append(g)
        if gpus:
            out["gpus"] = gpus
        return out


def gpu_indices(device: str, tp: int = 1) -> list[int]:
    """NVML indices of the GPUs a worker on `device` uses (CUDA_VISIBLE_DEVICES maps torch's to NVML's)."""
    if not device.startswith("cuda"):
        return []
    first = int(device.split(":")[1]) if ":" in device and device.split(":")[1].isdigit() else 0
    local = list(range(first, first + max(1, tp)))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if all(v.isdigit() for v in ids):
            return [int(ids[i]) for i in local if i < len(ids)]
        return []  # UUIDs: the mapping needs NVML lookups; leave the GPU checks out rather than guess
    return local
