"""What `crosscheck` runs per engine: codebench's side (a `run` command line), the engine's own tools (their
output files, imported), and which figures pair up (store.crosscheck.Pairing). Every tool runs at its own
defaults except what codebench's side sets too (lengths, batch, --opt values the tool has a flag for)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from store.crosscheck import Pairing, find, peer, prompt_tps

# codebench's llama.cpp options and llama-bench's / llama-batched-bench's flags for them
LLAMA_FLAGS = {"n_threads": "-t", "n_batch": "-b", "n_ubatch": "-ub", "n_gpu_layers": "-ngl", "type_k": "-ctk",
               "type_v": "-ctv", "flash_attn": "-fa"}  # fmt: skip


class LlamaPlan:
    """codebench's llama.cpp engine against llama-bench (pp at batch 1, tg at the cell's depth) and
    llama-batched-bench (every batch size), on the GGUF codebench's engine converted."""

    title = "llama.cpp's own tools (llama-bench, llama-batched-bench)"

    def __init__(self, args: argparse.Namespace, batches: list[int]):
        self.args, self.batches = args, batches
        self.gguf: Path | None = None
        unknown = [k for k, _ in args.opt if k not in LLAMA_FLAGS]
        if unknown:
            from engines.base import SpecError

            raise SpecError(f"crosscheck --opt {unknown[0]!r}: llama.cpp's tools have no flag for it; use one of "
                            f"{', '.join(LLAMA_FLAGS)}")  # fmt: skip

    def run_argv(self) -> list[str]:
        return ["--engine", "llama.cpp", "--quant", self.args.quant]

    def after_codebench(self, runtime: dict[str, Any], device: str) -> None:
        self.gguf = self.gguf or Path(runtime["gguf"])  # the same file for the tools

    def tools(self, out: Path) -> list[tuple[str, Path, dict]]:
        from engines.adapters.llamacpp import peer_bench

        a = self.args
        flags = [x for k, v in a.opt for x in (LLAMA_FLAGS[k], {True: "1", False: "0"}.get(v, str(v)))]
        rep, n_in, n_out = a.repeats, str(a.input_len), str(a.output_len)
        assert self.gguf is not None  # round 1 runs codebench first
        hints = {"model": a.model}
        return [("pp", peer_bench.llama_bench(self.gguf, out / "pp.json", n_prompt=n_in, n_gen="0", repetitions=rep,
                                              extra=flags), hints),
                ("tg", peer_bench.llama_bench(self.gguf, out / "tg.json", n_prompt="0", n_gen=n_out, repetitions=rep,
                                              extra=["-d", n_in, *flags]), hints),
                ("batched", peer_bench.batched_bench(self.gguf, out / "batched.jsonl", pp=n_in, tg=n_out,
                                                     pl=",".join(map(str, self.batches)), extra=flags), hints)]  # fmt: skip

    def pairings(self, results: dict[str, Any], rounds: list[dict[str, str]]) -> list[Pairing]:
        n_in, n_out = self.args.input_len, self.args.output_len
        tg = Pairing("decode tok/s", f"b=1 in={n_in} out={n_out}", f"llama-bench tg{n_out} -d {n_in}")
        pp = Pairing("prompt tok/s", f"b=1 in={n_in}", f"llama-bench pp{n_in}")
        batched = {b: (Pairing("decode tok/s", f"b={b} in={n_in} out={n_out}", "llama-batched-bench"),
                       Pairing("prompt tok/s", f"b={b} in={n_in}", "llama-batched-bench")) for b in self.batches}  # fmt: skip
        for ids in rounds:
            ours = results[ids["codebench"]].cells
            one = find(ours, 1, n_in, n_out)
            tg.add((one or {}).get("decode_tps"), peer(results[ids["tg"]].cells[0], "avg_ts"))
            pp.add(prompt_tps(one), peer(results[ids["pp"]].cells[0], "avg_ts"))
            for b, (dec, pro) in batched.items():
                cell, theirs = find(ours, b, n_in, n_out), find(results[ids["batched"]].cells, b, n_in, n_out)
                dec.add((cell or {}).get("decode_tps"), peer(theirs, "speed_tg"))
                pro.add(prompt_tps(cell), peer(theirs, "speed_pp"))
        out = ([tg, pp] if 1 in self.batches else []) + [p for pair in batched.values() for p in pair]
        for p in out:
            if p.figure == "prompt tok/s":
                p.why = "codebench's prompt time includes the first token's sampling"
        return out


class VllmPlan:
    """codebench's vllm engine against `vllm bench throughput`: one batch of N prompts each way, total tokens/s,
    each after one warm-up batch."""

    title = "vLLM's bench throughput"

    def __init__(self, args: argparse.Namespace, batches: list[int]):
        self.args, self.batches = args, batches
        self.device = "cpu"
        if args.opt:
            from engines.base import SpecError

            raise SpecError("crosscheck --engine vllm takes no --opt: both sides run at vLLM's defaults, with codebench's "
                            "dtype (--precision) and, on the CPU, the KV cache size codebench's vllm engine sets")  # fmt: skip

    def run_argv(self) -> list[str]:
        return ["--engine", "vllm"] + (["--precision", self.args.precision] if self.args.precision else [])

    def after_codebench(self, runtime: dict[str, Any], device: str) -> None:
        # The tool gets the dtype codebench ran: its own "auto" runs an fp32 model in bf16 on the CPU, which
        # on a host without native bf16 is 2-3x slower at batch 16 (docs/results/2026-12-06-crosscheck/).
        self.device, self.dtype = device, (runtime.get("engine_args") or {}).get("dtype")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise RuntimeError(f"codebench's vllm run recorded no dtype the tool takes ({str(self.dtype)[:40]!r})")

    def tools(self, out: Path) -> list[tuple[str, Path, dict]]:
        from engines.adapters.vllm import peer_bench
        from engines.adapters.vllm.engine import CPU_KV_CACHE_GIB
        from engines.models.refs import materialize

        a, cpu = self.args, not self.device.startswith("cuda")
        paths = []
        for b in self.batches:
            path = out / f"throughput-{b}.json"
            # one warm-up batch first, as codebench's side has (the tool's default times a cold first call)
            peer_bench.bench_throughput(materialize(a.model), path, input_len=a.input_len, output_len=a.output_len,
                                        requests=b, cpu=cpu, kv_cache_bytes=int(CPU_KV_CACHE_GIB * 2**30), warmups=b,
                                        dtype=self.dtype)  # fmt: skip
            paths.append((f"b{b}", path, {"input_len": a.input_len, "output_len": a.output_len, "model": a.model,
                                          "device": self.device}))  # fmt: skip
        return paths

    def pairings(self, results: dict[str, Any], rounds: list[dict[str, str]]) -> list[Pairing]:
        n_in, n_out = self.args.input_len, self.args.output_len
        tool = f"vllm bench throughput --dtype {self.dtype}"
        pairs = {b: Pairing("total tok/s", f"b={b} in={n_in} out={n_out}", tool) for b in self.batches}
        for ids in rounds:
            for b, p in pairs.items():
                cell = find(results[ids["codebench"]].cells, b, n_in, n_out)
                ours = b * (n_in + n_out) / cell["latency_s"] if cell and cell.get("latency_s") else None
                p.add(ours, peer(results[ids[f"b{b}"]].cells[0], "tokens_per_second"))
        for p in pairs.values():  # both sides make exactly output_len tokens (EOS ignored); vocab-sized sampling
            p.why = "the tool samples at temperature 1 where codebench decodes greedily, and times one call per round"
        return list(pairs.values())


class ServePlan:
    """codebench's openai engine against `vllm bench serve`, both against the server at --model URL, at each
    concurrency: TTFT and ITL p50 and p99 (vLLM's own figures from its result file)."""

    title = "vLLM's bench serve"

    def __init__(self, args: argparse.Namespace, batches: list[int]):
        self.args, self.batches = args, batches
        if not str(args.model).startswith(("http://", "https://")):
            from engines.base import SpecError

            raise SpecError("crosscheck --engine openai needs --model http://HOST:PORT/v1, the server both clients load")

    def run_argv(self) -> list[str]:
        served = ["--served-model", self.args.served_model] if self.args.served_model else []
        return ["--engine", "openai", "--requests", str(self.args.requests), *served]

    def _served_model(self) -> str:
        """The name vLLM's client sends: --served-model, else the first of the server's GET /v1/models."""
        if self.args.served_model:
            return self.args.served_model
        import json
        import urllib.request

        with urllib.request.urlopen(self.args.model.rstrip("/") + "/models", timeout=30) as resp:  # noqa: S310
            return str(json.loads(resp.read())["data"][0]["id"])

    def after_codebench(self, runtime: dict[str, Any], device: str) -> None:
        pass

    def tools(self, out: Path) -> list[tuple[str, Path, dict]]:
        from engines.adapters.vllm import peer_bench
        from engines.models.tiny import ensure_tiny

        a = self.args
        base = a.model.rstrip("/").removesuffix("/v1")
        tokenizer = a.tokenizer or str(ensure_tiny())
        model = self._served_model()
        paths = []
        for c in self.batches:
            path = out / f"serve-{c}.json"
            peer_bench.bench_serve(base, model, tokenizer, path, concurrency=c, input_len=a.input_len,
                                   output_len=a.output_len, requests=a.requests)  # fmt: skip
            paths.append((f"c{c}", path, {}))
        return paths

    def pairings(self, results: dict[str, Any], rounds: list[dict[str, str]]) -> list[Pairing]:
        n_in, n_out = self.args.input_len, self.args.output_len
        out = []
        for c in self.batches:
            for metric, key, vllm_key in (("TTFT p50", "ttft_s", "median_ttft_ms"), ("TTFT p99", "ttft_s", "p99_ttft_ms"),
                                          ("ITL p50", "itl_s", "median_itl_ms"), ("ITL p99", "itl_s", "p99_itl_ms")):  # fmt: skip
                p = Pairing(metric, f"c={c} in={n_in} out={n_out}", "vllm bench serve")
                pct = "p50" if "p50" in metric else "p99"
                for ids in rounds:
                    cell = find(results[ids["codebench"]].cells, c, n_in, n_out)
                    ours = (((cell or {}).get("metrics") or {}).get("serving") or {}).get(key, {}).get(pct)
                    theirs = peer(results[ids[f"c{c}"]].cells[0], vllm_key)
                    p.add(ours, theirs / 1000 if theirs else None)
                out.append(p)
        return out


PLANS = {"llama.cpp": LlamaPlan, "vllm": VllmPlan, "openai": ServePlan}
