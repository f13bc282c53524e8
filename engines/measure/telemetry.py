"""Telemetry sampling in the parent: psutil on the worker's process tree, NVML per GPU."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import psutil

from engines.measure.gpu_meter import reason_names


class Nvml:
    """NVML if a driver is present; every method is a no-op otherwise."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self._nv: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nv = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def _try(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            return None

    def devices(self) -> list[dict[str, Any]]:
        nv, out = self._nv, []
        for i, h in enumerate(self.handles):
            mem = self._try(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            name = self._try(lambda: nv.nvmlDeviceGetName(h))
            limit = self._try(lambda: nv.nvmlDeviceGetPowerManagementLimit(h))
            out.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "mem_total": getattr(mem, "total", None),
                "power_limit_w": limit / 1000 if limit is not None else None,
            })  # fmt: skip
        return out

    def cuda_driver(self) -> str | None:
        """The CUDA version the driver supports, e.g. "13.0"."""
        if not self._nv:
            return None
        v = self._try(self._nv.nvmlSystemGetCudaDriverVersion)
        return f"{v // 1000}.{v % 1000 // 10}" if isinstance(v, int) else None

    def driver(self) -> str | None:
        if not self._nv:
            return None
        v = self._try(self._nv.nvmlSystemGetDriverVersion)
        return v.decode() if isinstance(v, bytes) else v

    def sample(self) -> list[dict[str, Any]]:
        nv, out = self._nv, []
        for i, h in enumerate(self.handles):
            mem = self._try(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            util = self._try(lambda: nv.nvmlDeviceGetUtilizationRates(h))
            power = self._try(lambda: nv.nvmlDeviceGetPowerUsage(h))
            reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
            reasons = self._try(lambda: reasons_fn(h))
            out.append({
                "index": i,
                "mem_used": getattr(mem, "used", None),
                "mem_total": getattr(mem, "total", None),
                "util": getattr(util, "gpu", None),
                "power_w": power / 1000 if power is not None else None,
                "sm_clock_mhz": self._try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                "mem_clock_mhz": self._try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
                "energy_mj": self._try(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h)),
                "temp_c": self._try(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                "throttle": reason_names(reasons),  # power cap, thermal, hardware slowdown: [] when none
            })  # fmt: skip
        return out


class ProcessTree:
    """CPU % and RSS summed over a process and its descendants (cpu_percent needs kept objects)."""

    RESCAN_S = 1.0  # finding descendants reads all of /proc: most of the sampler's cost, and they rarely change

    def __init__(self, *pids: int):
        self.roots = [psutil.Process(pid) for pid in pids]
        self._procs: dict[int, psutil.Process] = {}
        self._scanned = 0.0

    def sample(self) -> tuple[float, int]:
        procs = list(self._procs.values())
        if time.monotonic() - self._scanned > self.RESCAN_S or not procs:
            self._scanned, procs = time.monotonic(), []
            for root in self.roots:  # the worker, and a local server it benchmarks
                try:
                    procs += [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
        cpu, rss = 0.0, 0
        alive = {}
        for p in procs:
            p = self._procs.get(p.pid, p)
            try:
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
                alive[p.pid] = p
            except psutil.Error:
                continue
        self._procs = alive
        return cpu, rss


def _alive(tree: ProcessTree) -> bool:
    return any(p.is_running() for p in tree.roots)


class Sampler(threading.Thread):
    """Samples at `hz` and hands each sample to `sink(t, cpu_percent, rss_bytes, gpus)`."""

    def __init__(self, sink: Callable[[float, float, int, list], None], hz: float = 5.0, nvml: Nvml | None = None):
        super().__init__(name="codebench-telemetry", daemon=True)
        self.sink = sink
        self.period = 1.0 / hz
        self.nvml = nvml or Nvml()
        self._tree: ProcessTree | None = None
        self._trees: dict[tuple[int, ...], ProcessTree] = {}  # kept, so switching workers keeps CPU % baselines
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def watch(self, pid: int | None, *also: int) -> None:
        with self._lock:
            key = (pid, *also) if pid else ()
            try:
                self._tree = (self._trees.get(key) or ProcessTree(pid, *also)) if pid else None
            except psutil.Error:
                self._tree = None
            if self._tree is not None:
                self._trees = {k: t for k, t in self._trees.items() if k != key and _alive(t)}
                self._trees[key] = self._tree

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        next_t = time.monotonic()
        while not self._halt.is_set():
            with self._lock:
                tree = self._tree
            cpu, rss = tree.sample() if tree else (0.0, 0)
            self.sink(time.time(), cpu, rss, self.nvml.sample())
            next_t += self.period
            self._halt.wait(max(0.0, next_t - time.monotonic()))
