"""codebench's llama.cpp decode tokens/s against llama.cpp's own llama-bench and llama-batched-bench.

    python benchmarks/llamacpp_vs_llama_bench.py [--model tiny|DIR] [--quants f32,q8_0,q4_0] [--threads 1,default]
        [--batches 1,2,4] [--input-len 32] [--tokens 128] [--rounds 5] [--repeats 3] [--per-graph] [--steps]

The tools are built from the llama.cpp vendored in the installed llama-cpp-python's sdist
(engines/adapters/llamacpp/tools.py, cached), tiny's GGUFs are the ones codebench writes (engines/adapters/llamacpp/gguf.py).
codebench is measured as a user sees it: the real CLI, and the cell's stored `decode_tps`, the figure
the tool displays (B x (output_len - 1) / (latency - TTFT), medians over --repeats).
Both sides decode the same: N steps at positions P..P+N-1 after a P-token prompt:
    codebench            run --input-len P --output-len N+1 (the first token comes from the prefill)
    llama-bench          -p 0 -n N -d P -r R: tg N at depth P (it runs batch 1 only)
    llama-batched-bench  -npp P -ntg N -npl B,B,B -c <codebench's n_ctx for B>: S_TG t/s, median of R runs
    (the same context shape as codebench's cell: B sequences of 256 positions, one KV stream each)
"default" threads: no n_threads / -t anywhere, so each side takes its own default (both printed).
Each round runs, per quant and thread setting, codebench and the tools, alternating which goes first.
best = the best round of codebench / the best round of the tool; median = median of per-round ratios.
--steps instead times the decode loop's per-step pieces in this process (numpy argmax vs llama.cpp's
greedy sampler), the figures quoted in engines/adapters/llamacpp/engine.py.
--loop instead runs, in this one process and on llama-cpp-python's own libraries, llama-bench's C loop
(its libllama-bench-impl.so, whose libllama/libggml resolve to the ones already loaded), the adapter's
generate() with its C decode loop (the default) and with decode_loop=python, and a bare Python loop of
llama_decode calls: what a Python-driven loop costs by itself.
--process instead runs llama-bench's tg loop as the standalone binary, as its main() inside a Python process that
imported nothing and one that imported llama_cpp (hence numpy), and the adapter in a fresh process as codebench's
worker runs it (no numpy) and after `import numpy`, alternated: what being a Python process, and holding numpy, cost.
Figures of 2026-12-06 on the 2-core dev VM: docs/results/2026-12-06-llama-bench-no-numpy/ (the worker without
numpy) and docs/results/2026-12-06-llama-bench/ (before).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def codebench(quant: str, threads: str, batches: list[int], p: int, n: int, repeats: int, db: Path,
              opts: tuple[str, ...] = (), model: str = "tiny") -> dict:  # fmt: skip
    """{batch: stored decode_tps} and the threads the run used, from one CLI run (`opts`: more --opt K=V)."""
    # --device cpu: the tools run on the CPU, so codebench does too where a GPU is present
    cmd = [sys.executable, "-m", "tui.cli", "run", "--model", model, "--engine", "llama.cpp", "--quant", quant,
           "--batch", ",".join(map(str, batches)), "--input-len", str(p), "--output-len", str(n + 1),
           "--warmup", "1", "--iters", "1", "--repeats", str(repeats), "--db", str(db), "--quiet",
           "--device", "cpu"]  # fmt: skip
    if threads != "default":
        cmd += ["--opt", f"n_threads={threads}"]
    for opt in opts:
        cmd += ["--opt", opt]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"codebench run failed: {proc.stderr[-2000:]}")
    con = sqlite3.connect(db)
    try:
        run_id, runtime = con.execute("select id, runtime from run order by created_at desc limit 1").fetchone()
        cells = con.execute("select batch, status, decode_tps, repeats from cell where run_id=?", (run_id,)).fetchall()
    finally:
        con.close()
    if any(status != "done" for _, status, _, _ in cells):
        raise RuntimeError(f"codebench cells not done: {[c[:3] for c in cells]}")
    peak = {b: max(b * n / (lat - ttft) for r in json.loads(reps) for lat, ttft in zip(r["latencies_s"], r["ttft_s"]))
            for b, _, _, reps in cells}  # fmt: skip
    return {"tps": {b: tps for b, _, tps, _ in cells}, "peak": peak, "threads": json.loads(runtime).get("n_threads")}


def llama_bench(exe: Path, gguf: str, threads: str, p: int, n: int, reps: int) -> dict:
    cmd = [str(exe), "-m", gguf, "-p", "0", "-n", str(n), "-d", str(p), "-r", str(reps), "-o", "json"]
    cmd += [] if threads == "default" else ["-t", threads]
    (row,) = json.loads(_out(cmd))
    ts = row["samples_ts"]
    return {"tps": {1: statistics.median(ts)}, "peak": {1: max(ts)}, "threads": row["n_threads"]}


def batched_bench(exe: Path, gguf: str, threads: str, batches: list[int], p: int, n: int, reps: int) -> dict:
    """One process per batch B, with codebench's context for that cell: B sequences of 256 positions."""
    tps, peak, used = {}, {}, None
    for b in batches:
        n_ctx = b * max(256, -(-(p + n + 1) // 256) * 256)
        cmd = [str(exe), "-m", gguf, "-npp", str(p), "-ntg", str(n), "-npl", ",".join([str(b)] * reps),
               "-c", str(n_ctx), "--output-format", "jsonl"]  # fmt: skip
        cmd += [] if threads == "default" else ["-t", threads]
        rows = [json.loads(line) for line in _out(cmd).splitlines() if line.startswith("{")]
        runs = [r["speed_tg"] for r in rows]
        tps[b], peak[b], used = statistics.median(runs), max(runs), rows[0]["n_threads"]
    return {"tps": tps, "peak": peak, "threads": used}


def _out(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr  # llama-batched-bench logs its jsonl lines to stderr


def _model(a: argparse.Namespace) -> Path:
    """tiny, or a local HF model directory (e.g. one larger than the CPU's last-level cache)."""
    from engines.models.tiny import ensure_tiny

    return ensure_tiny() if a.model == "tiny" else Path(a.model)


def compare(a: argparse.Namespace) -> None:
    from engines.adapters.llamacpp import gguf as gguf_convert
    from engines.adapters.llamacpp import tools as llama_tools

    t0 = time.perf_counter()
    tools = llama_tools.build_tools(log=lambda line: print("  " + line, flush=True))
    print(f"tools ready in {time.perf_counter() - t0:.1f} s: {', '.join(map(str, tools.values()))}")
    print(f"system info (installed = built): {llama_tools.manifest()['system_info']}")
    model = _model(a)
    ggufs = {q: str(gguf_convert.convert(model, q)) for q in a.quants}
    db = Path(tempfile.mkdtemp(prefix="cb-vs-llama-bench-")) / "runs.db"
    # results[(quant, threads, side)] = per-round {batch: tok/s}; used[(quant, threads, side)] = its threads
    results: dict[tuple, list[dict]] = {}
    used: dict[tuple, object] = {}
    for r in range(a.rounds):
        for quant in a.quants:
            for threads in a.threads:
                sides = {
                    "codebench": lambda: codebench(quant, threads, a.batches, a.input_len, a.tokens, a.repeats, db,
                                                   model=a.model),
                    "llama-bench": lambda: llama_bench(tools["llama-bench"], ggufs[quant], threads, a.input_len,
                                                       a.tokens, a.repeats),
                    "batched-bench": lambda: batched_bench(tools["llama-batched-bench"], ggufs[quant], threads,
                                                           a.batches, a.input_len, a.tokens, a.repeats),
                }  # fmt: skip
                if a.per_graph:  # llama-cpp-python's disposable threadpool per step, against the attached default
                    sides["codebench per-graph"] = lambda: codebench(quant, threads, a.batches, a.input_len, a.tokens,
                                                                     a.repeats, db, ("threadpool=per-graph",), a.model)
                order = list(sides) if (r + a.quants.index(quant)) % 2 == 0 else list(sides)[::-1]
                for side in order:
                    got = sides[side]()
                    results.setdefault((quant, threads, side), []).append(got)
                    used[(quant, threads, side)] = got["threads"]
        print(f"round {r + 1}/{a.rounds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    _table(a, results, used)


NOISY_SPREAD = 0.10  # best round / median round - 1 beyond which a cell's best-of-rounds ratio is flagged noisy


def _table(a: argparse.Namespace, results: dict, used: dict) -> None:
    print(f"\ncodebench decode tok/s (CLI, stored decode_tps) / llama.cpp's tools; tiny, prompt {a.input_len}, "
          f"{a.tokens} decode steps, {a.rounds} rounds of {a.repeats} runs a side.\n"
          "best = best round / best round; median = median of per-round ratios (a round's figure: codebench's "
          "stored decode_tps, the tools' median run);\npeak = fastest single run / fastest single run")  # fmt: skip
    print(f"{'quant':<6} {'threads':>9} {'batch':>5} {'tool':<13} {'best':>6} {'median':>6} {'peak':>6} "
          f"{'cb best':>8} {'cb med':>8} {'tool best':>9} {'tool med':>8}  flag")  # fmt: skip
    worst, flags = None, {"": 0, "MISS": 0, "noisy": 0}
    for quant in a.quants:
        for threads in a.threads:
            cb = results[(quant, threads, "codebench")]
            # At batch 1 both tools run the same computation: how far apart their best rounds are is what this
            # host's noise does to a best-of-rounds figure for this quant and thread setting.
            floor = abs(1 - max(x["tps"][1] for x in results[(quant, threads, "llama-bench")])
                        / max(x["tps"][1] for x in results[(quant, threads, "batched-bench")])) if 1 in a.batches else 0.0  # fmt: skip
            for tool in ("llama-bench", "batched-bench"):
                tr = results[(quant, threads, tool)]
                label = threads
                if threads == "default":
                    label = f"def {used[(quant, threads, 'codebench')]}/{used[(quant, threads, tool)]}"
                for b in a.batches:
                    if b not in tr[0]["tps"]:
                        continue
                    c, t = [x["tps"][b] for x in cb], [x["tps"][b] for x in tr]
                    best = max(c) / max(t)
                    med = statistics.median(x / y for x, y in zip(c, t))
                    peak = max(x["peak"][b] for x in cb) / max(x["peak"][b] for x in tr)
                    worst = best if worst is None else min(worst, best)
                    # A side whose best round is far above its median round: its best is a rare quiet moment of the
                    # host, and the ratio of two such tails cannot resolve the target's 3 %.
                    spread = max(max(c) / statistics.median(c), max(t) / statistics.median(t)) - 1
                    flag = "" if best >= 0.97 else "noisy" if spread > NOISY_SPREAD else "MISS"
                    flags[flag] += 1
                    print(f"{quant:<6} {label:>9} {b:>5} {tool:<13} {best:>6.3f} {med:>6.3f} {peak:>6.3f} "
                          f"{max(c):>8.1f} {statistics.median(c):>8.1f} {max(t):>9.1f} {statistics.median(t):>8.1f}  "
                          f"{flag}")  # fmt: skip
            if 1 in a.batches:
                print(f"{quant:<6} {threads:>9}     1 tool vs tool: llama-bench / batched-bench best rounds differ by "
                      f"{floor:.1%} on the same computation")  # fmt: skip
    print(f"\nlowest best-of-rounds ratio: {worst:.3f}; target >= 0.97 met in {flags['']} of {sum(flags.values())} cells; "
          f"below it: {flags['noisy']} noisy (a side's best round more than {NOISY_SPREAD:.0%} above its median round), "
          f"{flags['MISS']} MISS")
    if a.per_graph:
        print("\ncodebench, attached threadpool (default) / per-graph (llama-cpp-python's): best, paired median")
        for quant in a.quants:
            for threads in a.threads:
                cb, pg = results[(quant, threads, "codebench")], results[(quant, threads, "codebench per-graph")]
                for b in a.batches:
                    c, g = [x["tps"][b] for x in cb], [x["tps"][b] for x in pg]
                    med = statistics.median(x / y for x, y in zip(c, g))
                    print(f"{quant:<6} {threads:>9} {b:>5} {max(c) / max(g):>6.3f} {med:>6.3f}")
    print("threads 'def a/b': each side's own default, a = codebench's n_threads, b = the tool's")


# --- per-step pieces, in this process ----------------------------------------------------------------


def steps(a: argparse.Namespace) -> None:
    import llama_cpp as ll
    import numpy as np

    from engines.adapters.llamacpp.engine import LlamaCpp
    from engines.models.tiny import ensure_tiny

    eng = LlamaCpp({"quant": "f32", "options": {"n_threads": 1}})
    eng.load(str(ensure_tiny()), "cpu")
    smpl = ll.llama_sampler_init_greedy()
    print(f"per-step pieces of the decode loop, us (best / median of 7 x 20000 calls), vocab {eng.n_vocab}")
    for b in a.batches:
        eng.generate([[5, 6, 7]] * b, 4)  # leaves b rows of logits
        row = np.empty(b, dtype=np.int64)
        tok = np.frombuffer(eng._tok, dtype=np.int32)[:b]  # the batch's token array
        ctx = eng.ctx

        def numpy_view():  # the adapter's path
            eng._logits(b).argmax(axis=1, out=row)
            tok[:] = row

        def c_argmax():  # the C loop's pick, called per row from Python (the prefill's path beside the C loop)
            tok[:] = eng._argmax(b)

        def sampler():  # llama.cpp's greedy sampler, one call per sequence
            for i in range(b):
                row[i] = tok[i] = ll.llama_sampler_sample(smpl, ctx, i)

        def old():  # before: a fresh ctypes array view and a fresh argmax array each step
            ptr = ll.llama_get_logits(ctx)
            row[:] = np.ctypeslib.as_array(ptr, shape=(b, eng.n_vocab)).argmax(axis=1)
            tok[:] = row

        numpy_view()
        want = row.copy()
        sampler()
        assert (row == want).all(), "llama.cpp's greedy sampler and numpy's argmax disagree"
        c_argmax()
        assert (tok == want).all(), "the C argmax and numpy's disagree"
        for name, fn in (("numpy argmax on the kept view", numpy_view), ("C argmax per row", c_argmax),
                         ("llama_sampler_sample (greedy)", sampler), ("as_array + argmax (before)", old)):  # fmt: skip
            times = []
            for _ in range(7):
                t = time.perf_counter()
                for _ in range(20000):
                    fn()
                times.append((time.perf_counter() - t) / 20000 * 1e6)
            print(f"  batch {b}: {name:<32} {min(times):6.2f} {statistics.median(times):6.2f}")
    ll.llama_sampler_free(smpl)
    eng.unload()


def _rotated(sides: dict, rounds: int) -> dict[str, list[float]]:
    """{side: one median tok/s per round}; each round starts one side later, so none always goes first."""
    got: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            got[k].append(statistics.median(sides[k]()))
    return got


# --- the loop alone, in one process ----------------------------------------------------------------------


def loop(a: argparse.Namespace) -> None:
    import ctypes

    import llama_cpp as ll

    from engines.adapters.llamacpp import tools as llama_tools
    from engines.adapters.llamacpp.engine import LlamaCpp
    from engines.models.workloads import synthetic_prompts

    impl = llama_tools.build_tools()["llama-bench"].parent / "libllama-bench-impl.so"
    bench_main = ctypes.CDLL(str(impl))._Z11llama_benchiPPc  # llama-bench's main(); tools/llama-bench/main.cpp
    bench_main.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    libc = ctypes.CDLL(None)
    model = _model(a)
    p, n = a.input_len, a.tokens
    prompt = synthetic_prompts(model / "tokenizer.json", 1, p, seed=0)
    print(f"one process, llama-cpp-python's libraries; batch 1, tg {n} at depth {p}, tok/s of {a.repeats} runs a "
          f"round, {a.rounds} rounds rotated; ratio = paired median of round medians vs llama-bench's loop")  # fmt: skip
    for quant in a.quants:
        for threads in a.threads:
            t = llama_tools.default_threads() if threads == "default" else int(threads)
            eng = LlamaCpp({"quant": quant, "options": {"n_threads": t}})
            eng.load(str(model), "cpu")
            eng.generate(prompt, n + 1)
            py_eng = LlamaCpp({"quant": quant, "options": {"n_threads": t, "decode_loop": "python"}})
            py_eng.load(str(model), "cpu")
            py_eng.generate(prompt, n + 1)
            args = [b"llama-bench", b"-m", eng.gguf_path.encode(), b"-p", b"0", b"-n", str(n).encode(), b"-d",
                    str(p).encode(), b"-t", str(t).encode(), b"-r", str(a.repeats).encode(), b"-o", b"json"]  # fmt: skip
            batch = ll.llama_batch_init(p, 0, 1)

            def c_loop():
                with tempfile.TemporaryFile() as f:
                    with _redirect(f.fileno()):
                        bench_main(len(args), (ctypes.c_char_p * len(args))(*args))
                        libc.fflush(None)
                    f.seek(0)
                    return json.loads(f.read())[0]["samples_ts"]

            def adapter(e=eng):
                return [n / e.generate(prompt, n + 1).extra["decode_s"] for _ in range(a.repeats)]

            def bare():
                out = []
                for _ in range(a.repeats):
                    ll.llama_memory_clear(ll.llama_get_memory(eng.ctx), True)
                    for i, tok in enumerate(prompt[0]):
                        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, i == p - 1
                        batch.seq_id[i][0] = 0
                    batch.n_tokens = p
                    ll.llama_decode(eng.ctx, batch)
                    batch.n_tokens, batch.logits[0] = 1, 1
                    t0 = time.perf_counter()
                    for i in range(n):
                        batch.token[0], batch.pos[0] = 7, p + i
                        ll.llama_decode(eng.ctx, batch)
                        ll.llama_get_logits(eng.ctx)
                    out.append(n / (time.perf_counter() - t0))
                return out

            sides = {"llama-bench's loop": c_loop, "codebench adapter": adapter,
                     "adapter, Python loop": lambda: adapter(py_eng), "bare Python loop": bare}  # fmt: skip
            got = _rotated(sides, a.rounds)
            ref = got["llama-bench's loop"]
            for k, v in got.items():
                ratio = statistics.median(x / y for x, y in zip(v, ref))
                print(f"  {quant:<5} t={t} {k:<21} best {max(v):8.1f}  median {statistics.median(v):8.1f}  ratio {ratio:.3f}"
                      f"  ({1e6 / statistics.median(v):6.1f} us/step)")  # fmt: skip
            ll.llama_batch_free(batch)
            eng.unload()
            py_eng.unload()


class _redirect:
    """fd 1 into a file and fd 2 to /dev/null while llama-bench's main() runs in this process."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        self.saved = os.dup(1), os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.fd, 1)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc) -> None:
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


# --- the same C loop in different processes --------------------------------------------------------------

_IN_PYTHON = """
import ctypes, json, os, statistics, sys, tempfile, time
imports, impl, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in filter(None, imports.split(",")):
    __import__(name)
if imports:
    time.sleep(2)  # past the spin of OpenBLAS's idle thread after numpy's import
if impl == "adapter":  # as in codebench's worker: prompts from its child process, so numpy only if imported above
    from engines.adapters.llamacpp.engine import LlamaCpp
    from engines.harness.prompt_process import PromptProcess
    from engines.models.tiny import ensure_tiny
    p, n, t = int(argv[0]), int(argv[1]), int(argv[2])
    model = ensure_tiny()
    eng = LlamaCpp({"quant": argv[3], "options": {"n_threads": t}})
    eng.load(str(model), "cpu")
    side = PromptProcess()
    prompt = side.call("prompts", str(model / "tokenizer.json"), None, 1, p, 0, None)
    side.close()
    assert ("numpy" in sys.modules) == ("numpy" in imports), imports
    eng.generate(prompt, n + 1)
    runs = []
    for _ in range(int(argv[4])):
        t0 = time.perf_counter()
        res = eng.generate(prompt, n + 1)
        runs.append(n / (time.perf_counter() - t0 - res.ttft_s))  # the CLI's figure: latency - TTFT
    print(statistics.median(runs))
    sys.exit(0)
main = ctypes.CDLL(impl)._Z11llama_benchiPPc
main.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
args = [b"llama-bench", *(x.encode() for x in argv)]
with tempfile.TemporaryFile() as f:
    saved, null = (os.dup(1), os.dup(2)), os.open(os.devnull, os.O_WRONLY)
    os.dup2(f.fileno(), 1), os.dup2(null, 2)
    main(len(args), (ctypes.c_char_p * len(args))(*args))
    ctypes.CDLL(None).fflush(None)
    os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    f.seek(0)
    print(statistics.median(json.loads(f.read())[0]["samples_ts"]))
"""


def process(a: argparse.Namespace) -> None:
    """llama-bench's tg loop as its binary, as its main() in a Python process with nothing imported and with
    llama_cpp imported (so numpy too), and codebench's adapter in a fresh process as its worker runs it (no numpy)
    and after `import numpy`: batch 1, per quant and thread setting."""
    from engines.adapters.llamacpp import gguf as gguf_convert
    from engines.adapters.llamacpp import tools as llama_tools

    exe = llama_tools.build_tools()["llama-bench"]
    impl = str(exe.parent / "libllama-bench-impl.so")
    p, n = a.input_len, a.tokens
    for quant in a.quants:
        for threads in a.threads:
            t = str(llama_tools.default_threads() if threads == "default" else int(threads))
            gguf = str(gguf_convert.convert(_model(a), quant))
            bench = ["-m", gguf, "-p", "0", "-n", str(n), "-d", str(p), "-r", str(a.repeats), "-t", t, "-o", "json"]
            py = [sys.executable, "-c", _IN_PYTHON]
            sides = {
                "llama-bench binary": lambda: json.loads(_out([str(exe), *bench]))[0]["samples_ts"],
                "main() in bare Python": lambda: [float(_out([*py, "", impl, *bench]))],
                "main() after llama_cpp": lambda: [float(_out([*py, "llama_cpp", impl, *bench]))],
                "codebench adapter": lambda: [float(_out([*py, "", "adapter", str(p), str(n), t, quant,
                                                          str(a.repeats)]))],  # fmt: skip
                "adapter after numpy": lambda: [float(_out([*py, "numpy", "adapter", str(p), str(n), t, quant,
                                                            str(a.repeats)]))],  # fmt: skip
            }
            got = _rotated(sides, a.rounds)
            ref = got["llama-bench binary"]
            for k, v in got.items():
                print(f"  {quant:<5} t={t} {k:<23} best {max(v):8.1f}  median {statistics.median(v):8.1f}  "
                      f"best/best {max(v) / max(ref):.3f}  paired median {statistics.median(x / y for x, y in zip(v, ref)):.3f}",
                      flush=True)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny or a local HF model directory (llama architecture)")
    ap.add_argument("--quants", default="f32,q8_0,q4_0")
    ap.add_argument("--threads", default="1,default", help="thread settings: numbers and/or 'default'")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128, help="decode steps N (codebench generates N + 1 tokens)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="codebench repeats, llama-bench -r, batched-bench runs")
    ap.add_argument("--per-graph", action="store_true",
                    help="also run codebench with threadpool=per-graph (llama-cpp-python's disposable pool per step)")
    ap.add_argument("--steps", action="store_true", help="time the decode loop's per-step pieces instead")
    ap.add_argument("--loop", action="store_true", help="llama-bench's loop, the adapter and a bare loop in one process")
    ap.add_argument("--process", action="store_true",
                    help="llama-bench's loop as its binary and inside Python processes, and the adapter (batch 1)")
    a = ap.parse_args()
    a.quants, a.threads = a.quants.split(","), a.threads.split(",")
    a.batches = [int(b) for b in a.batches.split(",")]
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    (steps if a.steps else loop if a.loop else process if a.process else compare)(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
