"""Peak resident memory of processes, from Linux's VmHWM (what a worker's children or a server used)."""

from __future__ import annotations


def peak_rss(pids: list[int]) -> int | None:
    """Sum of VmHWM over `pids`; None where none could be read."""
    total, seen = 0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
                seen = True
        except (OSError, StopIteration):
            pass
    return total if seen else None
