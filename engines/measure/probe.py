"""Measure a device's memory bandwidth: `python -m engines.measure.probe [--device cuda]` (torch, own process).

Two numbers over a buffer much larger than any cache: a device-to-device copy (bytes read plus
bytes written per second) and a read-only reduction (bytes read per second). The larger is the
measured peak the roofline uses. Results are cached per device name in <cache>/probe.json, which
the engines read when they compute the roofline share; `codebench-tui probe` runs this module in a
subprocess so the CLI never imports torch. Importing this module imports no torch either.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from engines.measure import roofline


def cache_file() -> Path:
    from engines.models.tiny import cache_dir

    return cache_dir() / "probe.json"


def load_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def peak_bandwidth(device_name: str | None) -> tuple[float | None, str]:
    """(bytes/s, where it came from): this device's probe if one was run, else the datasheet table."""
    if device_name:
        probed = load_cache().get(device_name)
        if isinstance(probed, dict) and probed.get("peak_bw"):
            return float(probed["peak_bw"]), "probe"
    bw = roofline.datasheet_bandwidth(device_name)
    return (bw, "datasheet") if bw else (None, "")


def measure(device: str = "cuda", size_mib: int | None = None, iters: int = 20) -> dict[str, Any]:
    import torch

    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    if on_gpu:
        free, _total = torch.cuda.mem_get_info(dev)
        size_mib = size_mib or int(min(4096, free / 2**20 / 4))  # two buffers well inside free memory
        name = torch.cuda.get_device_name(dev)
    else:
        size_mib = size_mib or 512
        from engines.measure.hardware import _cpu_model

        name = _cpu_model()
    n = size_mib * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=dev).normal_()  # never time zeros
    dst = torch.empty_like(src)

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        if on_gpu:
            torch.cuda.synchronize(dev)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            samples = []
            for _ in range(iters):
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1000)
        else:
            samples = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        samples.sort()
        return samples[len(samples) // 2]  # median

    nbytes = n * 4
    copy_s = timed(lambda: dst.copy_(src))
    read_s = timed(lambda: src.sum())
    result = {
        "device": name,
        "buffer_bytes": nbytes,
        "copy_bw": 2 * nbytes / copy_s,  # read + write
        "read_bw": nbytes / read_s,
        "datasheet_bw": roofline.datasheet_bandwidth(name) if on_gpu else None,
        "torch": torch.__version__,
        "measured_at": time.time(),
    }
    result["peak_bw"] = max(result["copy_bw"], result["read_bw"])
    return result


def save(result: dict[str, Any]) -> Path:
    path = cache_file()
    data = load_cache()
    data[result["device"]] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.measure.probe")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size-mib", type=int)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    result = measure(args.device, args.size_mib)
    if not args.no_save:
        result["saved_to"] = str(save(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
