"""llama.cpp's decode phase in one C call (engines/adapters/llamacpp/steploop.c) against the Python loop."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from engines.adapters.llamacpp import steploop
from engines.adapters.llamacpp.engine import LlamaCpp, parse_options
from engines.base import SpecError
from engines.models.workloads import synthetic_prompts


def _argmax():
    fn = steploop.argmax()
    assert fn is not None, steploop.library()[1]  # this machine has a C compiler: the C loop must build here
    return fn


def test_argmax_is_numpys_first_maximum_with_ties_nan_and_inf():
    """Greedy tokens must not depend on the loop: the first maximum, and the first NaN where there is one."""
    argmax, rng = _argmax(), np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 2500))
        row = rng.standard_normal(n).astype(np.float32)
        if trial % 3 == 0:
            row = np.round(row * 2).astype(np.float32)  # many ties
        if trial % 5 == 0:
            row[rng.integers(0, n, size=2)] = np.nan
        if trial % 7 == 0:
            row[:] = -np.inf
        if trial % 11 == 0:
            row[rng.integers(0, n)] = np.inf
        assert argmax(row.ctypes.data, n) == row.argmax(), (trial, n)
    big = rng.standard_normal(151_936).astype(np.float32)  # a Qwen-sized vocabulary
    assert argmax(big.ctypes.data, big.size) == big.argmax()


@pytest.mark.parametrize("quant", ["f32", "q4_0"])
def test_c_and_python_loops_give_the_same_tokens_and_clock(tiny_model, quant):
    """Batches 1, 2, 4 with prompts of different lengths: the same tokens, positions and step count either way,
    and the C loop's clock readings are perf_counter's (they fall between readings taken around the call)."""
    engines = {loop: LlamaCpp({"quant": quant, "options": {"n_threads": 1, "decode_loop": loop}}) for loop in ("c", "python")}
    try:
        for loop, eng in engines.items():
            info = eng.load(str(tiny_model), "cpu")
            assert info.extra["decode_loop"] == loop and "decode_loop_why" not in info.extra
        for b in (1, 2, 4):
            prompts = [p[: 17 + 5 * i] for i, p in enumerate(synthetic_prompts(tiny_model / "tokenizer.json", b, 40, seed=b))]
            got = {}
            for loop, eng in engines.items():
                before = time.perf_counter()
                got[loop] = eng.generate(prompts, 24)
                after = time.perf_counter()
                steps = got[loop].step_times_s
                assert len(steps) == 23 and all(s > 0 for s in steps)
                assert 0 < got[loop].ttft_s + sum(steps) <= after - before
            assert got["c"].tokens == got["python"].tokens, (quant, b)
    finally:
        for eng in engines.values():
            eng.unload()


def test_decode_loop_is_validated_and_auto_is_the_default():
    assert parse_options({}, "cpu")["decode_loop"] == "auto"
    for bad in ("fast", "\x1b[31mc", 1, None):
        with pytest.raises(SpecError, match="decode_loop must be auto, c or python"):
            parse_options({"decode_loop": bad}, "cpu")


def test_without_a_compiler_auto_keeps_the_python_loop_and_c_refuses(tiny_model, tmp_path):
    """In a fresh process whose cache is empty and whose $CC fails: auto loads with the Python loop and stores why;
    decode_loop=c is a one-line SpecError that names the fix."""
    code = f"""
from pathlib import Path
from engines.adapters.llamacpp import steploop
steploop._cache = lambda: Path({str(tmp_path)!r})  # an empty cache: the library must be built
from engines.adapters.llamacpp.engine import LlamaCpp
from engines.base import SpecError
eng = LlamaCpp({{"quant": "f32", "options": {{"n_threads": 1}}}})
info = eng.load({str(tiny_model)!r}, "cpu")
print("AUTO", info.extra["decode_loop"], "|", info.extra["decode_loop_why"])
print("TOKENS", eng.generate([[5, 6, 7]], 4).tokens)
eng.unload()
try:
    LlamaCpp({{"quant": "f32", "options": {{"decode_loop": "c"}}}}).load({str(tiny_model)!r}, "cpu")
except SpecError as e:
    print("C", e)
"""
    env = {**os.environ, "CC": "/bin/false"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "AUTO python | /bin/false could not build it" in out, out
    assert not list(tmp_path.iterdir())  # no half-built library left behind
    assert "TOKENS [[" in out
    assert "C llama.cpp decode_loop=c is not available here" in out and "use decode_loop=auto or python" in out


def test_decode_loop_is_part_of_the_environment_compare_diffs():
    from store.envdiff import environment

    c, py = (environment({"runtime": {"n_threads": 2, "decode_loop": loop}}) for loop in ("c", "python"))
    assert c["llama.cpp decode loop"] == "c" and py["llama.cpp decode loop"] == "python"
    assert "llama.cpp decode loop" not in environment({"runtime": {"n_threads": 2}})  # runs stored before it
    with_numpy, without = (environment({"runtime": {"numpy_in_worker": v}}) for v in (True, False))
    assert with_numpy["numpy in the llama.cpp worker"] != without["numpy in the llama.cpp worker"]
