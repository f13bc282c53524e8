"""Energy and throttling of one GPU around a piece of work, through NVML; silent where NVML is absent.

The engine reads the meter before and after each minibatch, so joules per generated token cover
exactly the timed work (NVML's total-energy counter is in millijoules since the driver loaded).
Throttling: the clock-event reasons that slow a busy GPU (power cap, thermal, hardware slowdown),
read at both ends of the minibatch; NVML's power/thermal violation timers are recorded beside them
as raw seconds. No torch here.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

# NVML clock event ("throttle") reason bits; only the ones that slow a busy GPU are flagged.
REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}
SLOWING = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def reason_names(mask: int | None, slowing_only: bool = True) -> list[str]:
    if not mask:
        return []
    keep = SLOWING if slowing_only else ~0
    return [name for bit, name in REASONS.items() if mask & bit & keep]


class GpuMeter:
    """NVML handle of one GPU, found by the UUID torch reports (falls back to the index)."""

    def __init__(self, uuid: str | None = None, index: int = 0, nvml: Any = None) -> None:
        self.nv: Any = None
        self.handle: Any = None
        try:
            nv = nvml
            if nv is None:
                import pynvml as nv

                nv.nvmlInit()
            handle = None
            if uuid:
                want = uuid.lower().removeprefix("gpu-")
                for i in range(nv.nvmlDeviceGetCount()):
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    got = nv.nvmlDeviceGetUUID(h)
                    got = got.decode() if isinstance(got, bytes) else got
                    if got.lower().removeprefix("gpu-") == want:
                        handle = h
                        break
            self.handle = handle if handle is not None else nv.nvmlDeviceGetHandleByIndex(index)
            self.nv = nv
        except Exception:
            self.nv = self.handle = None

    @property
    def available(self) -> bool:
        return self.handle is not None

    def _try(self, fn, *args) -> Any:
        try:
            return fn(self.handle, *args)
        except Exception:
            return None

    def name(self) -> str | None:
        if not self.available:
            return None
        n = self._try(self.nv.nvmlDeviceGetName)
        return n.decode() if isinstance(n, bytes) else n

    def read(self) -> dict[str, Any] | None:
        if not self.available:
            return None
        nv = self.nv
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        out: dict[str, Any] = {
            "energy_mj": self._try(nv.nvmlDeviceGetTotalEnergyConsumption),
            "reasons": self._try(reasons_fn) if reasons_fn else None,
            "sm_clock_mhz": self._try(nv.nvmlDeviceGetClockInfo, getattr(nv, "NVML_CLOCK_SM", 1)),
        }
        for key, policy in (("power_violation_ns", "NVML_PERF_POLICY_POWER"), ("thermal_violation_ns", "NVML_PERF_POLICY_THERMAL")):
            v = self._try(nv.nvmlDeviceGetViolationStatus, getattr(nv, policy, 0 if "POWER" in policy else 1))
            out[key] = getattr(v, "violationTime", None)
        return out


def delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """What happened between two readings: joules, and throttling if any (empty without NVML)."""
    if not before or not after:
        return {}
    out: dict[str, Any] = {}
    if before.get("energy_mj") is not None and after.get("energy_mj") is not None:
        out["energy_j"] = (after["energy_mj"] - before["energy_mj"]) / 1000
    names = set(reason_names(before.get("reasons")) + reason_names(after.get("reasons")))
    # NVML's violation timers are kept as raw figures, not flags: on an H100 the power one grew in cells
    # that drew ~500 W of a 700 W limit at full SM clock, so it does not mean "slowed down" on its own.
    for key, label in (("power_violation_ns", "power_violation"), ("thermal_violation_ns", "thermal_violation")):
        a, b = before.get(key), after.get(key)
        if a is not None and b is not None and b > a:
            out[f"{label}_s"] = (b - a) / 1e9
    if after.get("sm_clock_mhz") is not None:
        out["sm_clock_mhz"] = after["sm_clock_mhz"]
    if names:
        out["throttle"] = sorted(names)
    return out


class GroupMeter:
    """Several engines.measure.gpu_meter.GpuMeter read as one: energy summed, throttle reasons merged."""

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
