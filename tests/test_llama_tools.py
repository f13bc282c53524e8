"""llama.cpp's tools built from the installed llama-cpp-python's sdist, and llama.cpp's default thread count."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from engines.adapters.llamacpp import tools as llama_tools

# Read at import, before the session fixture points CODEBENCH_CACHE at a temp dir: the slow test reuses the
# user's build (minutes to make) instead of starting a fresh one.
_USER_CACHE = os.environ.get("CODEBENCH_CACHE")


def _sysfs(tmp_path: Path, siblings: dict[int, str]) -> Path:
    for cpu, mask in siblings.items():
        d = tmp_path / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings").write_text(mask + "\n")
    return tmp_path


def test_physical_cores_count_sibling_sets_up_to_the_first_missing_cpu(tmp_path):
    # cpu0/cpu1 and cpu2/cpu3 are SMT pairs; cpu4 has no topology (offline), so llama.cpp stops there.
    sysfs = _sysfs(tmp_path, {0: "05", 1: "0a", 2: "05", 3: "0a", 5: "20"})
    assert llama_tools._linux_physical_cores(sysfs) == 2
    assert llama_tools._linux_physical_cores(tmp_path / "none") == 0


def test_hybrid_count_is_llama_cpps_walk():
    # 8 performance cores with hyperthreads (cpus 0-15), 8 efficiency cores (16-23): 8 math CPUs.
    atoms = llama_tools._cpu_list("16-23")
    assert llama_tools._math_cpus_hybrid(24, atoms, can_pin=lambda c: True) == 8
    assert llama_tools._math_cpus_hybrid(24, atoms, can_pin=lambda c: c < 10) == -1  # pinning fails: fall back
    assert llama_tools._cpu_list("0-2,5,7-8\n") == {0, 1, 2, 5, 7, 8}


def test_default_threads_is_the_engines_default():
    from engines.adapters.llamacpp.engine import parse_options

    n = llama_tools.default_threads()
    assert n >= 1 and parse_options({}, "cpu")["n_threads"] == n
    assert parse_options({"n_threads": 3}, "cpu")["n_threads"] == 3


def test_missing_toolchain_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no compiler
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("CODEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CODEBENCH_TOOLS_CACHE", raising=False)
    with pytest.raises(llama_tools.ToolsError) as err:
        llama_tools.build_tools()
    msg = str(err.value)
    assert "\n" not in msg and "missing: cmake, a C++ compiler" in msg and "apt-get install cmake g++" in msg


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a first build took 6 to 12 minutes on 2 busy cores
def test_built_tools_match_the_installed_build_and_default_threads(monkeypatch):
    """Builds llama-bench and llama-batched-bench (minutes the first time; the user's cache after that)."""
    if _USER_CACHE:
        monkeypatch.setenv("CODEBENCH_CACHE", _USER_CACHE)
    else:
        monkeypatch.delenv("CODEBENCH_CACHE")
    tools = llama_tools.build_tools()
    assert set(tools) == {"llama-bench", "llama-batched-bench"}
    doc = llama_tools.manifest()
    assert doc["system_info"] == llama_tools.installed_system_info()
    assert doc["system_info"] == llama_tools.built_system_info(tools["llama-bench"].parent)
    assert llama_tools.build_tools() == tools  # cached: no rebuild
    usage = subprocess.run([tools["llama-bench"], "--help"], capture_output=True, text=True).stdout
    default_t = re.search(r"-t, --threads <n>\s+\(default: (\d+)\)", usage)
    assert default_t, usage[:2000]
    assert int(default_t.group(1)) == llama_tools.default_threads()
