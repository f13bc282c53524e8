"""serve:llama.cpp: llama.cpp's own llama-server, started by codebench (engines/adapters/openai/served.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.adapters.llamacpp import gguf as gguf_convert
from engines.adapters.llamacpp import tools
from engines.adapters.openai.served import ServedEngine, check_count
from engines.adapters.openai.server_process import ServerProcess
from engines.base import SpecError

LLAMA_SERVER_OPTIONS = {
    "n_threads": "llama-server -t (default: llama-server's own)",
    "n_ctx": "llama-server -c, the context of all slots together (default: llama-server's own)",
    "parallel": "llama-server -np, parallel slots (default: llama-server's own, auto)",
    "n_gpu_layers": "llama-server -ngl (default: llama-server's own)",
}


class LlamaServer(ServedEngine):
    """llama.cpp's llama-server, built from the installed llama-cpp-python's vendored source (tools.py), on the
    GGUF codebench converts from the model directory (or the user's .gguf)."""

    name = "serve:llama.cpp"
    server_options = LLAMA_SERVER_OPTIONS
    write_flags = ("--log-file", "-lcd", "--lookup-cache-dynamic")  # llama.cpp common/arg.cpp

    @classmethod
    def check_server_options(cls, server: dict[str, Any]) -> None:
        for key in ("n_threads", "n_ctx", "parallel"):
            check_count(server, key, cls.name, 1, 1 << 24)
        check_count(server, "n_gpu_layers", cls.name, -1, 1 << 24)

    def _server(self, model_dir: str, device: str) -> ServerProcess:
        src = Path(model_dir)
        if src.is_file():
            gguf_convert.inspect_gguf(src)
            self.gguf_path, self.quant = src, None
        else:
            self.quant = gguf_convert.check_quant(self.config.get("quant"))
            self.gguf_path = gguf_convert.convert_isolated(src, self.quant)
        try:
            binary = tools.tool("llama-server")
        except tools.ToolsError as exc:
            raise SpecError(str(exc)) from None
        o = self.server_opts
        flags = {"n_threads": "-t", "n_ctx": "-c", "parallel": "-np", "n_gpu_layers": "-ngl"}
        argv = [str(binary), "-m", str(self.gguf_path), "--host", "127.0.0.1", "--port", "{port}", "--no-webui"]
        for key, flag in flags.items():
            if o.get(key) is not None:
                argv += [flag, str(o[key])]
        argv += list(o.get("server_args", []))
        return ServerProcess(self.name, argv, "/health", o.get("port"), float(o.get("ready_timeout_s", 600)))

    def _describe(self) -> dict[str, Any]:
        return {"gguf": str(self.gguf_path), "quant": self.quant, "llama_cpp": tools.installed_version()}
