"""`codebench-tui probe`: measure this device's memory bandwidth (copy and read) in a subprocess.

The result is cached per device name; the HF engines then use it as the peak of the decode roofline
(else the datasheet table in engines/measure/roofline.py). The CLI process itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="measure the device's memory bandwidth (the roofline's peak)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    p.add_argument("--size-mib", type=int, help="buffer size (default: 4 GiB on a GPU, 512 MiB on the CPU)")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines.base import SpecError
    from engines.measure.hardware import resolve_device

    device = resolve_device(args.device)
    cmd = [sys.executable, "-m", "engines.measure.probe", "--device", device]
    if args.size_mib:
        if args.size_mib < 1:
            raise SpecError(f"--size-mib must be at least 1, got {args.size_mib}")
        cmd += ["--size-mib", str(args.size_mib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"codebench-tui: probe failed on {device}: {tail}", file=sys.stderr)
        return 1
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['device']} ({device}), {r['buffer_bytes'] / 2**30:.2f} GiB buffer")
    print(f"  copy  {r['copy_bw'] / 1e9:8.1f} GB/s (bytes read + written)")
    print(f"  read  {r['read_bw'] / 1e9:8.1f} GB/s")
    if r.get("datasheet_bw"):
        print(f"  datasheet {r['datasheet_bw'] / 1e9:,.0f} GB/s; measured peak = "
              f"{r['peak_bw'] / r['datasheet_bw']:.0%} of it")  # fmt: skip
    print(f"  saved to {r['saved_to']} (the roofline peak for this device)")
    return 0
