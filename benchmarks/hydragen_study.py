"""Seed 003 (Hydragen) on the GPU, issue 8 part 8: end-to-end study, attention microbenchmark, report.

    python benchmarks/hydragen_study.py check --device cuda                           # hydragen numerics there
    python benchmarks/hydragen_study.py run --db hydragen.db --out docs/results       # on the GPU machine
    python benchmarks/hydragen_study.py report --db hydragen.db -o docs/results/hydragen.md
    python benchmarks/hydragen_study.py run --quick --db /tmp/h.db --out /tmp/h     # CPU smoke test on tiny
    python benchmarks/hydragen_study.py bench --device cuda                           # quick: hydragen vs bound

`run` is one `codebench-tui run` (one run group) on codellama-7b:random in fp16: hf-generate
(no sharing, the FlashAttention-style baseline: SDPA picks the flash kernel), hf-noshare (no
sharing through the same decode loop as the next three), hf-prefix-kv, hydragen and noattention over N = 32..256 completions x P = 1024..16384 shared tokens, U = 32,
G = 128; OOM cells are recorded and larger cells skipped. Then `microbench attention` over the
same N x P with U = 0..512 step 128 (seed 003 Figure 5), saved as JSON lines. Every axis, the
engines, the timing and the model can be narrowed (`run --help`), e.g. to fit a device lease;
`--study-timeout` stops the study (SIGINT, then SIGKILL of its process group) so the cells
finished so far are kept and the microbenchmark still runs.

`check` compares hydragen with standard attention on a device: the engine's own self-check in
fp32/fp16/bf16, codellama-sized shapes against a float64 reference, and the tiny model's logits
and greedy tokens (hydragen vs hf-generate, fp32).

`bench` is the fast device check: one model load, then noattention and hydragen (static suffix
cache with CUDA graphs as the engine runs it; without graphs; HF's DynamicCache) through the
engines' own generate at N = 128,256, P = 4096 by default, tokens/s and decode ms per step, warm-up 1 + 3 timed calls; `--profile` adds the GPU
kernel time per decode step (torch.profiler), which says whether a step is bound by the GPU or
by the CPU launching kernels (HF's eager loop is, on an H100, at N <= 256).

`report` checks the issue's targets per cell with P >= 4096: hydragen >= 80% of noattention's
tokens/s, and >= 3x the no-sharing baseline wherever the baseline ran; where the baseline ran out
of memory and hydragen did not, the table says so. No torch needed for the report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENGINES = ("hf-generate", "hf-noshare", "hf-prefix-kv", "hydragen", "noattention", "vllm")
TARGET_P, TARGET_BOUND, TARGET_BASE = 4096, 0.8, 3.0
BENCH_VARIANTS = ("noattention", "hydragen", "hydragen-eager", "hydragen-dynamic")
FULL = {"model": "codellama-7b:random", "precision": "fp16", "device": "cuda", "batch": "32,64,128,256",
        "shared_len": "1024,2048,4096,8192,16384", "suffix_len": "32", "output_len": "128", "warmup": 1, "repeats": 2,
        "engines": ",".join(ENGINES[:5]), "cell_timeout": 900.0, "mb_suffix": "0:513:128", "mb_iters": 10}  # fmt: skip
QUICK = {"model": "tiny", "precision": "fp32", "device": "cpu", "batch": "2,4", "shared_len": "32,64", "suffix_len": "8",
         "output_len": "4", "warmup": 0, "repeats": 1, "cell_timeout": 120.0, "mb_suffix": "0,8", "mb_iters": 2}  # fmt: skip


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def study(a: argparse.Namespace) -> dict:
    """The study file for `codebench-tui run --study`: FULL, or QUICK with --quick, each overridable per axis."""
    v = {**FULL, **(QUICK if a.quick else {}), **{k: x for k, x in vars(a).items() if k in FULL and x is not None}}
    opts = dict(o.split("=", 1) for o in a.opt or [])
    opts = {k: int(x) if x.isdigit() else x for k, x in opts.items()}
    engines = [e for e in v["engines"].split(",") if e]
    if a.vllm and "vllm" not in engines:  # seed 003's fourth system: vLLM with automatic prefix caching
        engines.append("vllm")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"unknown engine(s) {', '.join(unknown)}; use some of {', '.join(ENGINES)}")
    runs = []
    for e in engines:
        r = {"engine": e, "precision": v["precision"], "options": dict(opts)}
        if e == "hf-generate":
            r["attention"] = "sdpa"
        if e == "vllm":
            r["options"] = {"enable_prefix_caching": True}
        runs.append(r)
    grid = {"batch": _ints(v["batch"]), "shared_len": _ints(v["shared_len"]), "suffix_len": _ints(v["suffix_len"]),
            "output_len": _ints(v["output_len"])}  # fmt: skip
    return {"name": "seed003 hydragen: shared prefix", "model": v["model"], "device": v["device"], "runs": runs,
            "grid": grid, "timing": {"warmup": v["warmup"], "iters": 1, "repeats": v["repeats"]},
            "workload": {"kind": "shared-prefix"}, "cell_timeout_s": v["cell_timeout"],
            "_microbench": {"suffix": v["mb_suffix"], "iters": v["mb_iters"], "dtype": v["precision"]}}  # fmt: skip


def _call(cmd: list[str], timeout: float | None) -> int:
    """Run cmd in its own process group; past `timeout` interrupt it (the runner keeps finished cells), then kill."""
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"hydragen_study: {cmd[3]!r} passed {timeout:g} s; stopping it (finished cells are kept)", flush=True)
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                return proc.wait(timeout=wait) or 124
            except ProcessLookupError:
                return 124
            except subprocess.TimeoutExpired:
                continue
        return 124


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = study(args)
    mbo = spec.pop("_microbench")
    study_file = out / "hydragen_study.json"
    study_file.write_text(json.dumps(spec, indent=2) + "\n")
    cli = [sys.executable, "-m", "tui.cli"]
    rc = _call([*cli, "run", "--study", str(study_file), "--db", args.db, "--quiet"], args.study_timeout)
    if args.no_microbench:
        return rc
    g = spec["grid"]
    mb = ["microbench", "attention", "--batch", ",".join(map(str, g["batch"])),
          "--prefix-len", ",".join(map(str, g["shared_len"])), "--device", spec["device"],
          "--suffix-len", mbo["suffix"], "--iters", str(mbo["iters"]), "--json", str(out / "hydragen_microbench.jsonl")]  # fmt: skip
    mb += ["--heads", "4", "--head-dim", "16"] if args.quick else ["--heads", "32", "--head-dim", "128", "--dtype", mbo["dtype"]]
    rc2 = _call([*cli, *mb], args.mb_timeout)
    return rc or rc2


def _cells(db_path: str) -> tuple[dict, dict]:
    """{engine: {(N, P, U, G): cell}} of the newest group in the database, and that group's spec."""
    from store.db import open_db
    from store.queries import list_runs
    from store.results import load_result

    db = open_db(db_path, create=False)
    with db.session() as s:
        runs = list_runs(session=s)
        if not runs:
            raise SystemExit(f"no runs in {db_path}")
        group = runs[0].group_id
        results = [load_result(r, session=s, telemetry=False) for r in reversed(runs) if r.group_id == group]
    by_engine: dict = {}
    for r in results:
        for c in r.cells:
            p = c.get("params") or {}
            by_engine.setdefault(r.run["engine"], {})[(c["batch"], p.get("shared_len"), p.get("suffix_len"), c["output_len"])] = c
    return by_engine, results[0].run.get("spec") or {}


def _verdict(k: tuple, row: dict, tps: dict) -> tuple[str, str | None]:
    """(text, outcome) of the issue's target at one cell; outcome pass/FAIL/unmeasured, None below TARGET_P."""
    if k[1] < TARGET_P:
        return "-", None
    hyd, bound, base = tps["hydragen"], tps["noattention"], tps["hf-generate"]
    if not hyd or not bound:
        missing = [f"{e} {row[e]['status'] if row[e] else 'not run'}" for e in ("hydragen", "noattention") if not tps[e]]
        return "not measured (" + ", ".join(missing) + ")", "unmeasured"
    base_cell = row["hf-generate"]
    ok = hyd / bound >= TARGET_BOUND and (base is None or hyd / base >= TARGET_BASE)
    text = "pass" if ok else "FAIL"
    if base is None and base_cell and base_cell["status"] in ("oom", "skipped"):
        text += " (baseline OOM, hydragen ran)"
    elif base is None:
        text += f" (baseline {base_cell['status'] if base_cell else 'not run'})"
    return text, "pass" if ok else "FAIL"


def report(args: argparse.Namespace) -> int:
    from store.tables import fmt

    cells, spec = _cells(args.db)
    engines = [e for e in ENGINES if e in cells]
    keys = sorted({k for e in cells.values() for k in e})

    def show(c: dict | None) -> str:
        if c is None:
            return "-"
        if c["status"] == "done":
            return fmt(c["tokens_per_s"])
        return "OOM (skipped)" if c["status"] == "skipped" and "OOM" in (c.get("error") or "") else c["status"].upper()

    ratio = lambda r, pct=False: "-" if r is None else (f"{r:.0%}" if pct else f"{r:.2f}x")  # noqa: E731
    lines = [f"# Hydragen (seed 003) on {spec.get('model')}", "",
             "End-to-end tokens/s (N x G generated tokens over the whole call, prefill included) per engine; ratios of "
             "hydragen to noattention (the attention-free bound) and to hf-generate (no sharing). "
             f"Targets at P >= {TARGET_P}: hydragen >= {TARGET_BOUND:.0%} of the bound, >= {TARGET_BASE:g}x no sharing "
             "wherever the baseline fits in memory.", "",
             "| N | P | U | G | " + " | ".join(engines) + " | hyd/bound | hyd/base | hydragen peak GiB | same tokens | target |",
             "|" + "---|" * (9 + len(engines))]  # fmt: skip
    summary = [f"{'N':>4} {'P':>6} {'hydragen':>9} {'bound':>9} {'baseline':>14} {'hyd/bound':>9} {'hyd/base':>8}  target"]
    outcomes: list[str] = []
    for k in keys:
        row = {e: cells.get(e, {}).get(k) for e in ENGINES}
        tps = {e: (c["tokens_per_s"] if c and c["status"] == "done" else None) for e, c in row.items()}
        hyd, bound, base = tps["hydragen"], tps["noattention"], tps["hf-generate"]
        r_bound = hyd / bound if hyd and bound else None
        r_base = hyd / base if hyd and base else None
        ref = ((row["hydragen"] or {}).get("metrics") or {}).get("reference") or {}
        same = {True: "yes", False: "NO"}.get(ref.get("identical"), "-")
        peak = (row["hydragen"] or {}).get("peak_gpu_bytes")
        verdict, outcome = _verdict(k, row, tps)
        if outcome:
            outcomes.append(outcome)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(show(row[e]) for e in engines)
                     + f" | {ratio(r_bound, True)} | {ratio(r_base)} | {'-' if not peak else f'{peak / 2**30:.1f}'}"
                     + f" | {same} | {verdict} |")  # fmt: skip
        summary.append(f"{k[0]:>4} {k[1]:>6} {show(row['hydragen']):>9} {show(row['noattention']):>9} "
                       f"{show(row['hf-generate']):>14} {ratio(r_bound, True):>9} {ratio(r_base):>8}  {verdict}")  # fmt: skip
    counts = {o: outcomes.count(o) for o in ("pass", "FAIL", "unmeasured")}
    verdict_line = (f"Targets over the {len(outcomes)} cells with P >= {TARGET_P}: {counts['pass']} pass, "
                    f"{counts['FAIL']} FAIL, {counts['unmeasured']} not measured.")  # fmt: skip
    lines += ["", verdict_line]
    mb = Path(args.db).with_name("hydragen_microbench.jsonl") if not args.microbench else Path(args.microbench)
    if mb.exists() and mb.read_text().strip():
        rows = [json.loads(x) for x in mb.read_text().splitlines() if x.strip()]
        head = rows[0].get("header", {})
        num = lambda x: fmt(x) if isinstance(x, float) else str(x).upper()  # noqa: E731
        lines += ["", f"## Attention alone ({head.get('dtype')} on {head.get('gpu') or head.get('device')})", "",
                  "One decode step (1 query token per sequence); standard: SDPA over per-sequence copies of the prefix.", "",
                  "| N | P | U | standard ms | hydragen ms | speed-up | max abs diff |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows[1:]:
            std, hyd = r.get("standard_ms"), r.get("hydragen_ms")
            sp = f"{std / hyd:.2f}x" if isinstance(std, float) and isinstance(hyd, float) else "-"
            diff = r.get("max_abs_diff")
            lines.append(f"| {r['batch']} | {r['prefix']} | {r['suffix']} | {num(std)} | {num(hyd)} | {sp} | "
                         f"{'-' if diff is None else f'{diff:.1e}'} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print("\n".join(summary) + "\n" + verdict_line)
    else:
        sys.stdout.write(text)
    return 1 if counts["FAIL"] else 0


def check(args: argparse.Namespace) -> int:
    """Hydragen against standard attention on args.device; prints one line per check, exit 1 if any fails."""
    import torch

    from engines.adapters.hf import hydragen
    from engines.adapters.hf.engine import HFGenerate
    from engines.adapters.hf.shared_prefix import Hydragen, common_prefix_len
    from engines.models.prompt_sources import shared_prefix_prompts
    from engines.models.tiny import ensure_tiny

    dev = torch.device(args.device)
    if dev.type == "cuda":
        print("device:", torch.cuda.get_device_name(dev), "| torch", torch.__version__, flush=True)
    failed = 0

    def report_line(name: str, value: float, limit: float) -> None:
        nonlocal failed
        ok = value < limit  # NaN fails
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.2e} (limit {limit:.0e})", flush=True)

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for name, dt in dtypes.items():  # the engine's load-time check, as the engine runs it
        report_line(f"self_check {name} max abs diff", hydragen.self_check(dev, dt), 1e-3 if name == "fp32" else 5e-2)
    # codellama-sized heads: decode step and suffix prefill, MHA and GQA; relative error against float64.
    g = torch.Generator(device="cpu").manual_seed(1)
    for n, h, hkv, p, u, lq in ((16, 32, 32, 4096, 40, 1), (8, 32, 32, 1024, 32, 32), (16, 32, 8, 2048, 17, 1)):
        d = 128
        base = [torch.randn(*s, generator=g, dtype=torch.float64) for s in
                ((n, h, lq, d), (1, hkv, p, d), (1, hkv, p, d), (n, hkv, u, d), (n, hkv, u, d))]  # fmt: skip
        q, pk, pv, sk, sv = (x.to(dev) for x in base)
        full = lambda a, b: torch.cat([a.expand(n, -1, -1, -1), b], 2)  # noqa: E731
        ref = hydragen.standard_attention(q, full(pk, sk), full(pv, sv), d**-0.5)
        for name, dt in dtypes.items():
            qq, ppk, ppv, ssk, ssv = (x.to(dt) for x in (q, pk, pv, sk, sv))
            got = hydragen.hydragen_attention(qq, ssk, ssv, (ppk, ppv), d**-0.5, h // hkv).double()
            std = hydragen.standard_attention(qq, full(ppk, ssk), full(ppv, ssv), d**-0.5).double()
            rel = float((got - ref).norm() / ref.norm())
            rel_std = float((std - ref).norm() / ref.norm())
            # No worse than 3x standard attention's own error in this dtype (CUDA's fp32 kernels may use TF32).
            limit = max(1e-4 if name == "fp32" else 1e-2, 3 * rel_std)
            report_line(f"N={n} H={h}/{hkv} P={p} U={u} q={lq} {name} rel err (standard's own {rel_std:.1e})", rel, limit)
            if lq == 1 and dev.type == "cuda":  # the engine's decode step: static cache, CUDA graph replay
                state = hydragen.HydragenPrefix([(ppk, ppv)])
                state.allocate(n, u, graphs=True)
                state.begin(0)
                state.write(0, ssk[:, :, : u - 1], ssv[:, :, : u - 1])  # the suffix so far; its last token decodes
                state.begin(u - 1)
                with torch.inference_mode():
                    out = state.graphs.run(state, 0, qq, ssk[:, :, u - 1 :], ssv[:, :, u - 1 :], d**-0.5)
                if out is None:
                    report_line(f"  the same as a CUDA graph: capture failed ({state.graphs.error})", float("nan"), limit)
                    continue
                rel_g = float((out.double() - ref).norm() / ref.norm())
                report_line(f"  the same decode step as a CUDA graph (static cache) {name} rel err", rel_g, limit)
    # The tiny model end to end: logits of the suffixes and greedy tokens, hydragen vs hf-generate, fp32.
    path = ensure_tiny()
    prompts = shared_prefix_prompts(path / "tokenizer.json", 4, 64, 8, seed=1)
    mk = lambda cls: cls({"engine": cls.name, "precision": "fp32", "attention": None, "quant": None, "options": {}})  # noqa: E731
    hyd, std = mk(Hydragen), mk(HFGenerate)
    info = hyd.load(str(path), args.device)  # runs the engine's self-check on this device
    std.load(str(path), args.device)
    print(f"hydragen engine loaded on {args.device}: self-check {info.extra.get('hydragen_self_check_max_abs'):.2e}")
    from transformers import DynamicCache

    p = common_prefix_len(prompts)
    ids = torch.tensor(prompts, device=dev)
    with torch.inference_mode():
        want = std.model(input_ids=ids).logits[:, p:]
        pc = DynamicCache(config=hyd.model.config)
        hyd.model(input_ids=ids[:1, :p], past_key_values=pc)
        state = hydragen.HydragenPrefix([(layer.keys, layer.values) for layer in pc.layers])
        pos = torch.arange(p, ids.shape[1], device=dev)[None, :]
        got = hyd.model(input_ids=ids[:, p:], position_ids=pos, past_key_values=DynamicCache(config=hyd.model.config),
                        hydragen_prefix=state).logits  # fmt: skip
    report_line("tiny fp32 suffix logits max abs diff", float((got - want).abs().max()), 1e-3)
    res = hyd.generate(prompts, 16)
    a, b = res.tokens, std.generate(prompts, 16).tokens
    same = a == b
    failed += not same
    mode = res.extra.get("hydragen_decode")
    print(f"{'ok  ' if same else 'FAIL'} tiny fp32 greedy tokens (4 x 16) identical to hf-generate: {same} "
          f"(decode: {mode})", flush=True)  # fmt: skip
    if dev.type == "cuda" and not str(mode).startswith("cuda graphs"):
        failed += 1
        print(f"FAIL hydragen decode on CUDA should run as CUDA graphs: {mode} {res.extra.get('hydragen_graph_error', '')}")
    print(f"hydragen check on {args.device}: {'all passed' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


def _gpu_ms_per_step(eng, prompts: list[list[int]], a: int = 8, b: int = 40) -> tuple[float, list[str]]:
    """GPU kernel time per decode step (torch.profiler): two calls of a and b new tokens, the difference / (b - a).

    Also the host's side: the CPU ops and CUDA runtime calls with the most self time per step (the
    profiler adds a few microseconds to each, so compare variants, not absolute figures).
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def times(new_tokens: int) -> tuple[dict[str, float], dict[str, float]]:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            eng.generate(prompts, new_tokens)
            torch.cuda.synchronize()
        events = prof.key_averages()
        return ({e.key: e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA},
                {e.key: e.self_cpu_time_total for e in events if e.device_type == DeviceType.CPU})  # fmt: skip

    (ga, ca), (gb, cb) = times(a), times(b)
    per = lambda x, y: {k: (t - x.get(k, 0.0)) / (b - a) / 1e3 for k, t in y.items()}  # noqa: E731
    gpu, cpu = per(ga, gb), per(ca, cb)
    top = sorted(gpu.items(), key=lambda kv: -kv[1])[:6]
    lines = [f"    {ms:7.3f} ms/step  {k[:100]}" for k, ms in top]
    lines.append(f"    host: {sum(cpu.values()):.2f} ms/step of self CPU time in profiled ops; the most:")
    lines += [f"    {ms:7.3f} ms/step  cpu {k[:100]}" for k, ms in sorted(cpu.items(), key=lambda kv: -kv[1])[:8]]
    return sum(gpu.values()), lines


def bench(args: argparse.Namespace) -> int:
    """noattention vs hydragen (static and dynamic suffix cache) on one loaded model; prints a table."""
    import copy
    import statistics
    import time

    import torch

    from engines.adapters.hf.shared_prefix import Hydragen, NoAttention
    from engines.models.refs import materialize

    run = {"engine": "hydragen", "precision": args.precision, "attention": None, "quant": None,
           "options": dict(o.split("=", 1) for o in args.opt or [])}  # fmt: skip
    run["options"] = {k: int(x) if x.isdigit() else x for k, x in run["options"].items()}
    hyd = Hydragen(run)
    t0 = time.perf_counter()
    info = hyd.load(materialize(args.model), args.device)
    dev = hyd.device
    print(f"loaded {args.model} {args.precision} on {dev} in {time.perf_counter() - t0:.1f} s "
          f"(self-check {info.extra.get('hydragen_self_check_max_abs'):.1e}); torch {torch.__version__}", flush=True)  # fmt: skip
    # One model, three engines: the same weights and loop; only the attention function and the cache differ.
    variants = {}
    for name, cls, impl, cache, graphs in (("noattention", NoAttention, "noattention", "dynamic", False),
                                           ("hydragen", Hydragen, "hydragen", "static", True),
                                           ("hydragen-eager", Hydragen, "hydragen", "static", False),
                                           ("hydragen-dynamic", Hydragen, "hydragen", "dynamic", False)):  # fmt: skip
        if name in (args.variants or ",".join(BENCH_VARIANTS)).split(","):
            e = copy.copy(hyd)
            e.__class__, e.opts, e.graphs = cls, {**hyd.opts, "cache": cache}, graphs
            variants[name] = (e, impl)
    vocab = hyd.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in _ints(args.batch):
        for p in _ints(args.shared_len):
            prefix = torch.randint(2, vocab, (p,), generator=g).tolist()
            prompts = [prefix + torch.randint(2, vocab, (args.suffix_len,), generator=g).tolist() for _ in range(n)]
            res: dict[str, dict] = {}
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}

            def once(name: str) -> None:
                eng, impl = variants[name]
                hyd.model.set_attn_implementation(impl)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t = time.perf_counter()
                r = eng.generate(prompts, args.output_len)
                wall = time.perf_counter() - t
                times[name].append((wall, (wall - r.ttft_s) / max(1, args.output_len - 1)))
                res[name] = {"tokens": r.tokens, "mode": " ".join(str(r.extra.get(k, "")) for k in
                                                                  ("hydragen_decode", "hydragen_state"))}  # fmt: skip

            # Warm-up, then rounds that run every variant once: the host CPU's speed drifts, and each
            # round's variants see the same drift.
            for rnd in range(args.repeats + 1):
                for name in variants:
                    if "error" in res.get(name, {}):
                        continue
                    try:
                        once(name)
                    except Exception as exc:  # noqa: BLE001 - an OOM is this cell's result
                        res[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
                        if dev.type == "cuda":
                            torch.cuda.empty_cache()
                    if rnd == 0:
                        times[name].clear()
            for name, (eng, impl) in variants.items():
                if times[name] and "error" not in res[name]:
                    wall = statistics.median(w for w, _ in times[name])
                    step = statistics.median(x for _, x in times[name])
                    res[name].update(tps=n * args.output_len / wall, step_ms=1e3 * step,
                                     walls=[w for w, _ in times[name]])  # per round, for the agreement's intervals
                    if args.profile and dev.type == "cuda":
                        hyd.model.set_attn_implementation(impl)
                        gpu_ms, top = _gpu_ms_per_step(eng, prompts)
                        print(f"N={n} P={p} {name}: GPU kernels {gpu_ms:.2f} ms per decode step (wall {1e3 * step:.2f} ms; "
                              "the difference is the CPU launching them)", flush=True)  # fmt: skip
                        print("\n".join(top), flush=True)
                print(f"N={n} P={p} {name}: {res[name].get('tps', 0):,.0f} tok/s, "
                      f"{res[name].get('step_ms', float('nan')):.2f} ms/step {res[name].get('mode', '')} "
                      f"{res[name].get('error', '')}", flush=True)  # fmt: skip
            rows.append((n, p, res))
    names = list(variants)
    bound = "noattention"
    print(f"\n{'N':>4} {'P':>6} " + " ".join(f"{x:>24}" for x in names) + "  hyd/bound  hydragen variants same tokens (fp16/bf16: kernel order may flip)")
    worst = None
    for n, p, res in rows:
        cells = [f"{res[x]['tps']:>9,.0f} tok/s {res[x]['step_ms']:>6.2f} ms" if "tps" in res[x] else f"{res[x]['error'][:24]:>24}"
                 for x in names]  # fmt: skip
        ratio = res["hydragen"]["tps"] / res[bound]["tps"] if "tps" in res.get("hydragen", {}) and "tps" in res.get(bound, {}) else None
        toks = [res[x]["tokens"] for x in names if x.startswith("hydragen") and "tokens" in res[x]]
        same = "-" if len(toks) < 2 else "yes" if all(t == toks[0] for t in toks) else "NO"
        if ratio is not None:
            worst = ratio if worst is None else min(worst, ratio)
        print(f"{n:>4} {p:>6} " + " ".join(cells) + f"  {'-' if ratio is None else f'{ratio:.0%}':>9}  {same}")
    if worst is not None:
        print(f"hydragen / noattention, lowest over the grid: {worst:.0%} (target >= {TARGET_BOUND:.0%} at P >= {TARGET_P})")
    if args.json:
        keep = ("tps", "step_ms", "walls", "error")
        Path(args.json).write_text(json.dumps({
            "model": args.model, "precision": args.precision, "suffix_len": args.suffix_len,
            "output_len": args.output_len, "repeats": args.repeats,
            "cells": [{"batch": n, "shared_len": p, **{name: {k: v for k, v in r.items() if k in keep}
                                                        for name, r in res.items()}} for n, p, res in rows],
        }, indent=1) + "\n")  # fmt: skip
    return 0


def agree(args: argparse.Namespace) -> int:
    """hydragen / noattention per cell: the runner's study against `bench` on the same cells (target: within 5%)."""
    bench_doc = json.loads(Path(args.bench).read_text())
    cells, _ = _cells(args.db)
    lines = [f"{'N':>4} {'P':>6} {'bench':>8} {'study':>8} {'95% CI of the study ratio':>26} {'study/bench':>11}  verdict"]
    bad = 0
    for row in bench_doc["cells"]:
        key = (row["batch"], row["shared_len"], bench_doc["suffix_len"], bench_doc["output_len"])
        hyd, bound = (cells.get(e, {}).get(key) for e in ("hydragen", "noattention"))
        b_ratio = row.get("hydragen", {}).get("tps", 0) / row["noattention"]["tps"] if row.get("noattention", {}).get("tps") else None
        if not (hyd and bound and hyd["status"] == bound["status"] == "done" and b_ratio):
            lines.append(f"{key[0]:>4} {key[1]:>6}  not measured on both sides")
            bad += 1
            continue
        s_ratio = hyd["tokens_per_s"] / bound["tokens_per_s"]
        ci = _interval(hyd, bound, s_ratio)
        walls = (row["hydragen"].get("walls") or [], row["noattention"].get("walls") or [])
        b_ci = _paired(b_ratio, *walls)
        off = s_ratio / b_ratio
        ok = abs(off - 1) <= args.tolerance
        bad += not ok
        lines.append(f"{key[0]:>4} {key[1]:>6} {b_ratio:>8.1%} {s_ratio:>8.1%} {ci:>26} {off:>11.3f}  "
                     + ("ok" if ok else f"OFF by more than {args.tolerance:.0%}")
                     + ("" if b_ci is None else f"  (bench's own 95% CI {b_ci[0]:.1%}-{b_ci[1]:.1%})"))  # fmt: skip
    print("hydragen / noattention tokens/s: `hydragen_study.py bench` (one process, variants interleaved) vs the "
          "runner's study (two workers, interleaved schedule)")
    print("\n".join(lines))
    print(f"{len(bench_doc['cells']) - bad} of {len(bench_doc['cells'])} cells within {args.tolerance:.0%}")
    return 1 if bad else 0


def _paired(point: float, a: list[float], b: list[float]) -> tuple[float, float] | None:
    """95% t-interval of a tokens/s ratio from per-round latencies b_i / a_i, centred on `point` as Compare does."""
    import math

    from store.significance import log_halfwidth

    half = log_halfwidth([y / x for x, y in zip(a, b)])
    return None if half is None else (point * math.exp(-half), point * math.exp(half))


def _interval(hyd: dict, bound: dict, point: float) -> str:
    """The study's paired interval: its two runs' repeats of one round ran back to back."""
    import statistics

    def by_round(c: dict) -> dict[int, float]:
        return {r.get("round", i): statistics.fmean(r["latencies_s"]) for i, r in enumerate(c["repeats"])}

    a, b = by_round(hyd), by_round(bound)
    rounds = sorted(set(a) & set(b))
    ci = _paired(point, [a[r] for r in rounds], [b[r] for r in rounds])
    return "-" if ci is None else f"{ci[0]:.1%}-{ci[1]:.1%}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--db", required=True)
    r.add_argument("--out", default="docs/results", help="folder for the study file and the microbenchmark JSON")
    r.add_argument("--quick", action="store_true", help="tiny on the CPU with a small grid (smoke test)")
    r.add_argument("--vllm", action="store_true", help="add vLLM with prefix caching (needs vllm installed)")
    r.add_argument("--model", help=f"default {FULL['model']}")
    r.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help=f"default {FULL['precision']}")
    r.add_argument("--device", help=f"default {FULL['device']}")
    r.add_argument("--batch", help=f"completions N (default {FULL['batch']})")
    r.add_argument("--shared-len", help=f"shared tokens P (default {FULL['shared_len']})")
    r.add_argument("--suffix-len", help=f"suffix tokens U (default {FULL['suffix_len']})")
    r.add_argument("--output-len", help=f"generated tokens G (default {FULL['output_len']})")
    r.add_argument("--warmup", type=int)
    r.add_argument("--repeats", type=int)
    r.add_argument("--engines", help=f"default {FULL['engines']}")
    r.add_argument("--opt", action="append", help="KEY=VALUE added to every run's options, e.g. layers=1 (dry runs)")
    r.add_argument("--cell-timeout", type=float, help=f"seconds per cell (default {FULL['cell_timeout']:g})")
    r.add_argument("--study-timeout", type=float, help="stop the study after this many seconds, keeping its cells")
    r.add_argument("--mb-suffix", help=f"microbenchmark suffix lengths (default {FULL['mb_suffix']})")
    r.add_argument("--mb-iters", type=int)
    r.add_argument("--mb-timeout", type=float)
    r.add_argument("--no-microbench", action="store_true")
    r.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("--db", required=True)
    p.add_argument("--microbench", help="the microbenchmark JSON lines (default: beside the database)")
    p.add_argument("-o", "--output", help="write the Markdown here and print a short summary")
    p.set_defaults(func=report)
    c = sub.add_parser("check")
    c.add_argument("--device", default="cuda")
    c.set_defaults(func=check)
    b = sub.add_parser("bench", help="quick device check: noattention vs hydragen, one model load")
    b.add_argument("--model", default=FULL["model"])
    b.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=FULL["precision"])
    b.add_argument("--device", default="cuda")
    b.add_argument("--batch", default="128,256", help="completions N (default 128,256)")
    b.add_argument("--shared-len", default="4096", help="shared tokens P (default 4096)")
    b.add_argument("--suffix-len", type=int, default=32)
    b.add_argument("--output-len", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--variants", help=f"some of {','.join(BENCH_VARIANTS)} (default all): hydragen-eager is the static "
                   "cache without CUDA graphs, hydragen-dynamic HF's DynamicCache")
    b.add_argument("--opt", action="append", help="KEY=VALUE engine option, e.g. layers=2 (CPU dry runs)")
    b.add_argument("--profile", action="store_true", help="GPU kernel time per step and the top kernels")
    b.add_argument("--json", help="also write the per-cell figures here (for `agree`)")
    b.set_defaults(func=bench)
    a = sub.add_parser("agree", help="the runner's hydragen/noattention ratios against bench's, per cell")
    a.add_argument("--bench", required=True, help="the JSON `bench --json` wrote")
    a.add_argument("--db", required=True, help="the study's database (its newest group)")
    a.add_argument("--tolerance", type=float, default=0.05)
    a.set_defaults(func=agree)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
