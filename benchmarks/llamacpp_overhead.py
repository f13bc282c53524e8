"""codebench's llama.cpp adapter against llama-cpp-python called directly, and a quant table.

    python benchmarks/llamacpp_overhead.py [--quant f32] [--batch 1,4] [--input-len 64] [--tokens 64]
                                           [--threads N] [--rounds 7] [--table f32,f16,q8_0,q4_0]

Part 1 alternates (ABBA), round by round, the adapter (engines.adapters.llamacpp.engine.LlamaCpp, in-process) and a
plain loop over llama-cpp-python's low-level API written the obvious way (same GGUF, threads,
context, prompts and batch; one llama_batch per step), and for batch 1 also the high-level
`Llama.generate` at temperature 0. Ratio = adapter tokens/s / direct tokens/s (target >= 0.97),
by wall clock and by process CPU time (steadier on a shared machine; with 1 thread llama.cpp
computes on the calling thread, so CPU time is the work done).
Part 2 runs each quant in a fresh process: tokens/s at each batch, file size and peak RSS.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _prompts(model_dir: Path, batch: int, length: int) -> list[list[int]]:
    from engines.models.workloads import synthetic_prompts

    return synthetic_prompts(model_dir / "tokenizer.json", batch, length, seed=0)


class Direct:
    """llama-cpp-python's low-level API, no codebench code in the loop."""

    def __init__(self, path: str, n_threads: int):
        import llama_cpp as ll
        import numpy as np

        self.ll, self.np, self.n_threads = ll, np, n_threads
        from engines.adapters.llamacpp.engine import model_params  # the adapter's repack choice (off on AMX CPUs)

        self.model = ll.llama_model_load_from_file(path.encode(), model_params())
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.ctx = self.batch = None

    def context(self, n_seq: int, n_ctx: int, n_batch: int) -> None:
        """The same context shape the adapter chose for this cell."""
        ll = self.ll
        if self.ctx:
            ll.llama_batch_free(self.batch)
            ll.llama_free(self.ctx)
        cp = ll.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.n_batch = n_ctx, n_seq, n_batch
        cp.n_threads = cp.n_threads_batch = self.n_threads
        self.ctx = ll.llama_init_from_model(self.model, cp)
        self.batch = ll.llama_batch_init(n_batch, 0, 1)

    def generate(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        ll, np, b = self.ll, self.np, self.batch
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        k = 0
        for s, p in enumerate(prompts):
            for i, t in enumerate(p):
                b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = t, i, 1, i == len(p) - 1
                b.seq_id[k][0] = s
                k += 1
        b.n_tokens = k
        assert ll.llama_decode(self.ctx, b) == 0
        out = [[] for _ in prompts]
        for step in range(n):
            logits = np.ctypeslib.as_array(ll.llama_get_logits(self.ctx), shape=(len(prompts), self.n_vocab))
            nxt = logits.argmax(axis=1)
            for s, t in enumerate(nxt):
                out[s].append(int(t))
            if step == n - 1:
                break
            for s, p in enumerate(prompts):
                b.token[s], b.pos[s], b.n_seq_id[s], b.logits[s] = nxt[s], len(p) + step, 1, 1
                b.seq_id[s][0] = s
            b.n_tokens = len(prompts)
            assert ll.llama_decode(self.ctx, b) == 0
        return out

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def _timed(fn, prompts, n):
    """(tokens/s by wall clock, tokens/s by this process's CPU time, output)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(prompts, n)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(prompts) * n / wall, len(prompts) * n / cpu, out


def overhead(model_dir: Path, quant: str, batches: list[int], in_len: int, n: int, threads: int, rounds: int) -> None:
    import llama_cpp as ll

    from engines.adapters.llamacpp.engine import LlamaCpp

    eng = LlamaCpp({"quant": quant, "options": {"n_threads": threads}})
    eng.load(str(model_dir), "cpu")
    direct = Direct(eng.gguf_path, threads)
    high = ll.Llama(eng.gguf_path, n_threads=threads, n_threads_batch=threads, n_ctx=in_len + n + 8, verbose=False)

    def high_level(prompts, k):
        high.reset()  # else generate() reuses the cached prompt prefix and skips the prefill
        gen = high.generate(prompts[0], temp=0.0, reset=True)
        return [[next(gen) for _ in range(k)]]

    def adapter(prompts, k):
        return eng.generate(prompts, k).tokens

    print(f"adapter vs direct llama-cpp-python: {quant}, {threads} thread(s), {in_len} prompt + {n} new tokens, "
          f"{rounds} rounds alternated ABBA; median tokens/s, median per-round ratio by wall clock and by CPU time")  # fmt: skip
    print(f"{'batch':>5} {'adapter':>8} {'direct':>8} {'ratio':>6} {'cpu ratio':>9} {'cpu IQR':>11} {'same':>5}   "
          f"{'Llama.generate':>14} {'ratio':>6} {'cpu ratio':>9}")  # fmt: skip
    for b in batches:
        prompts = _prompts(model_dir, b, in_len)
        eng.generate(prompts, n)  # warm-up; sizes the adapter's context for this cell
        direct.context(eng.n_seq, eng.n_ctx, eng.n_batch)
        direct.generate(prompts, n)
        sides = {"a": (adapter, [], []), "d": (direct.generate, [], [])}
        if b == 1:
            high_level(prompts, n)
            sides["h"] = (high_level, [], [])
        outs = {}
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # ABBA: drift hits both sides alike
            for key in order:
                fn, wall, cpu = sides[key]
                w, c, outs[key] = _timed(fn, prompts, n)
                wall.append(w), cpu.append(c)
        same = all(o == outs["a"] for o in outs.values())

        def paired(key: str, i: int) -> float:  # median of per-round ratios: a round's drift cancels
            return statistics.median(x / y for x, y in zip(sides["a"][i], sides[key][i]))

        q1, _, q3 = statistics.quantiles([x / y for x, y in zip(sides["a"][2], sides["d"][2])], n=4)

        aw, dw = statistics.median(sides["a"][1]), statistics.median(sides["d"][1])
        hl = f"{'-':>14} {'-':>6} {'-':>9}"
        if "h" in sides:
            hl = f"{statistics.median(sides['h'][1]):>14.1f} {paired('h', 1):>6.3f} {paired('h', 2):>9.3f}"
        print(f"{b:>5} {aw:>8.1f} {dw:>8.1f} {paired('d', 1):>6.3f} {paired('d', 2):>9.3f} {q1:>5.2f}-{q3:<5.2f} "
              f"{str(same):>5}   {hl}")  # fmt: skip
    direct.close()
    eng.unload()


def _quant_row(model_dir: str, quant: str, batches: list[int], in_len: int, n: int, threads: int, rounds: int, q):
    from engines.adapters.llamacpp.engine import LlamaCpp

    eng = LlamaCpp({"quant": quant, "options": {"n_threads": threads}})
    info = eng.load(model_dir, "cpu")
    row = {"quant": quant, "file_mb": info.extra["gguf_bytes"] / 2**20, "weights_mb": info.weight_bytes / 2**20}
    for b in batches:
        prompts = _prompts(Path(model_dir), b, in_len)
        eng.generate(prompts, n)
        rates, decode = [], []
        for _ in range(rounds):
            res = eng.generate(prompts, n)
            rates.append(b * n / res.extra["wall_s"])
            decode.append(res.extra["perf_decode_tokens_per_s"])
        row[f"b{b}"] = statistics.median(rates)
        row[f"b{b}_decode"] = statistics.median(decode)
    with open("/proc/self/status") as f:
        row["peak_rss_mb"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    eng.unload()
    q.put(row)


def table(model_dir: Path, quants: list[str], batches: list[int], in_len: int, n: int, threads: int, rounds: int) -> None:
    ctx = mp.get_context("spawn")
    rows = []
    for quant in quants:
        q = ctx.Queue()
        p = ctx.Process(target=_quant_row, args=(str(model_dir), quant, batches, in_len, n, threads, rounds, q))
        p.start()
        rows.append(q.get())
        p.join()
    cols = "".join(f" {'b' + str(b) + ' tok/s':>10} {'decode':>8}" for b in batches)
    print(f"\nquant table on tiny ({in_len} prompt + {n} new tokens, {threads} thread(s), median of {rounds}; "
          "tok/s = wall clock of the whole call, decode = llama.cpp perf counters)")  # fmt: skip
    print(f"{'quant':<7} {'file MB':>8} {'weights MB':>10}{cols} {'peak RSS MB':>11}")
    for r in rows:
        vals = "".join(f" {r[f'b{b}']:>10.1f} {r[f'b{b}_decode']:>8.1f}" for b in batches)
        print(f"{r['quant']:<7} {r['file_mb']:>8.2f} {r['weights_mb']:>10.2f}{vals} {r['peak_rss_mb']:>11.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="f32")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--table", default="f32,f16,q8_0,q4_0", help="quants for part 2 ('' to skip)")
    ap.add_argument("--skip-overhead", action="store_true")
    a = ap.parse_args()
    from engines.models.tiny import ensure_tiny

    model_dir = ensure_tiny()
    batches = [int(b) for b in a.batch.split(",")]
    if not a.skip_overhead:
        overhead(model_dir, a.quant, batches, a.input_len, a.tokens, a.threads, a.rounds)
    if a.table:
        table(model_dir, a.table.split(","), batches, a.input_len, a.tokens, a.threads, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
