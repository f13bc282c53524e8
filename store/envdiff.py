"""What differs between the environments of runs being compared: anything that can move a number.

Each run stores its host fingerprint (engines/measure/hardware.py), what its worker reported at load (versions,
threads, the environment it really ran with) and its study (executor, schedule, worker environment).
`environment(run)` flattens that into named values; `env_diff(results)` keeps the names whose values
differ. A value a run did not record reads "not recorded" (runs stored before it was).
"""

from __future__ import annotations

from typing import Any

from store.results import RunResult

MISSING = "not recorded"


def _text(value: Any) -> str | None:
    if value is None or value == "" or value == [] or value == {}:
        return None
    return str(value)


def environment(run: dict[str, Any]) -> dict[str, str]:
    """Named values of a stored run's environment (only those it recorded)."""
    host = run.get("host") if isinstance(run.get("host"), dict) else {}
    rt = run.get("runtime") if isinstance(run.get("runtime"), dict) else {}
    spec = run.get("spec") if isinstance(run.get("spec"), dict) else {}
    gpus = [g for g in host.get("gpus") or [] if isinstance(g, dict)]
    values: dict[str, Any] = {
        "host": host.get("hostname"),
        "CPU": host.get("cpu"),
        "CPU features": host.get("cpu_features"),
        "CPU threads": host.get("cpu_logical"),
        "CPU cores": host.get("cpu_physical"),
        "CPU affinity": host.get("cpu_affinity"),
        "CPU governor": host.get("cpu_governor"),
        "GPU": ", ".join(str(g.get("name") or "?") for g in gpus),
        "GPU power limit W": ", ".join(f"{g['power_limit_w']:g}" for g in gpus if g.get("power_limit_w") is not None),
        "driver": host.get("driver"),
        "CUDA (driver)": host.get("cuda_driver"),
        "Python": host.get("python"),
        "device": run.get("device"),
        "executor": spec.get("executor"),
        "Ray node": (host.get("ray") or {}).get("node_ip") if isinstance(host.get("ray"), dict) else None,
        "schedule": rt.get("schedule"),
        "llama.cpp threads": rt.get("n_threads"),
        "llama.cpp threadpool": rt.get("threadpool"),
        "llama.cpp decode loop": rt.get("decode_loop"),
        "numpy in the llama.cpp worker": rt.get("numpy_in_worker"),  # 2-3 % of its decode speed on a CPU
        "torch threads": rt.get("torch_threads"),
    }
    libs = {**(host.get("libraries") or {}), **(rt.get("versions") or {})}  # the worker's own report wins
    for name, version in sorted(libs.items()):
        if name not in ("textual", "sqlmodel", "codebench-tui"):  # the dashboard's, not the engine's
            values[name] = version
    env = rt.get("env") if isinstance(rt.get("env"), dict) else host.get("env")
    for name, value in sorted((env or {}).items()):
        values[f"${name}"] = value
    if isinstance(env, dict):  # recorded, so an absent variable is really unset
        values["$env"] = "recorded"
    out = {k: t for k, v in values.items() if (t := _text(v)) is not None}
    return out


def env_diff(results: list[RunResult]) -> list[tuple[str, list[str]]]:
    """[(name, value per run)] for every name whose values differ across `results`."""
    if len(results) < 2:
        return []
    envs = [environment(r.run) for r in results]
    names = list(dict.fromkeys(k for e in envs for k in e))
    rows = []
    for name in names:
        if name == "$env":
            continue
        unset = "unset" if name.startswith("$") else MISSING
        values = [e.get(name, unset if e.get("$env") else MISSING) for e in envs]
        if len(set(values)) > 1:
            rows.append((name, values))
    return rows


def diff_lines(results: list[RunResult], width: int = 60) -> list[str]:
    """One line per difference: `OMP_NUM_THREADS: 1 | 2` in the runs' order (values cut to `width`)."""
    return [f"{name}: " + " | ".join(v if len(v) <= width else v[: width - 1] + "…" for v in values)
            for name, values in env_diff(results)]  # fmt: skip
