"""Where a study's runs execute: local worker processes (the default) or a Ray cluster."""

from __future__ import annotations

from urllib.parse import parse_qs

from engines.base import SpecError

HINT = "use local, ray, or ray://HOST:PORT of a Ray cluster's client server, optionally ?cpus=N cores per rank"


def parse_executor(value: str) -> tuple[str, str | None]:
    """("local", None) or ("ray", address); the address None means a cluster started on this machine."""
    if value == "local":
        return "local", None
    base, _, query = value.partition("?")
    ray_cpus(value)  # a bad query fails here, with the rest
    if base == "ray":
        return "ray", None
    if base.startswith("ray://"):
        host, _, port = base[len("ray://"):].rpartition(":")
        if host and port.isascii() and port.isdigit():
            return "ray", base
    raise SpecError(f"unknown executor '{value}' ({HINT})")


def ray_cpus(value: str) -> int:
    """CPU cores each tensor-parallel rank holds on its node (?cpus=N, default 1); Ray sets OMP_NUM_THREADS to it."""
    query = parse_qs(value.partition("?")[2], keep_blank_values=True)
    unknown = set(query) - {"cpus"}
    if unknown:
        raise SpecError(f"unknown executor option '{sorted(unknown)[0]}' ({HINT})")
    raw = query.get("cpus", ["1"])[-1]
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise SpecError(f"executor option cpus must be a whole number >= 1, not '{raw}' ({HINT})")
    return int(raw)
