"""The host fingerprint records the CPU's math instruction sets, and a comparison names them when they differ:
the same tool at the same settings runs bf16 3x slower on a CPU without native bf16."""

import pytest

from engines.measure.hardware import CPU_FEATURES, cpu_features, fingerprint
from store.envdiff import MISSING, env_diff, environment
from store.results import RunResult


def test_cpu_features_are_read_from_cpuinfo_in_a_fixed_order():
    zen4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx512_bf16 avx2 avx512f fma avx\n"
    older = "flags\t\t: fpu avx fma avx2 avx512f\n"
    graviton = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16 evtstrm\n"
    assert cpu_features(zen4) == "avx avx2 fma avx512f avx512_bf16"
    assert cpu_features(older) == "avx avx2 fma avx512f"
    assert cpu_features(graviton) == "asimd sve bf16 i8mm"
    assert cpu_features("model name\t: ?\n") is None  # no flags line: not recorded, not "none"


def test_this_hosts_fingerprint_agrees_with_torchs_own_cpu_probe():
    torch = pytest.importorskip("torch")
    recorded = (fingerprint()["cpu_features"] or "").split()
    assert all(f in CPU_FEATURES for f in recorded)
    # torch asks CPUID itself: what it dispatches to, the fingerprint must name
    needed = {"AVX512": {"avx2", "avx512f"}, "AVX512_BF16": {"avx512f", "avx512_bf16"}, "AVX2": {"avx2"}}
    assert needed.get(torch.backends.cpu.get_cpu_capability(), set()) <= set(recorded), recorded


def _run(host: dict) -> RunResult:
    return RunResult(run={"id": "x", "host": host, "runtime": {}, "spec": {}}, cells=[])


def test_a_comparison_names_the_features_that_differ():
    a, b = _run({"cpu": "AMD EPYC", "cpu_features": "avx avx2 avx512f avx512_bf16"}), _run({"cpu": "AMD EPYC",
                                                                                            "cpu_features": "avx avx2"})  # fmt: skip
    assert env_diff([a, b]) == [("CPU features", ["avx avx2 avx512f avx512_bf16", "avx avx2"])]
    assert environment(_run({"cpu": "AMD EPYC"}).run).get("CPU features", MISSING) == MISSING  # runs stored before
