"""Servers codebench starts: an engine's own OpenAI-compatible server on 127.0.0.1, measured through the openai
engine's load generator (TTFT, TPOT, ITL, E2E, SLOs). Each family declares its server engine beside its
in-process one (llamacpp/serve.py, vllm/serve.py) and subclasses ServedEngine with how to start the server.
The run's options split into the server's (its command line) and the client's (openai's options). A server
that exits mid-cell makes the cell `crashed`; the next cell starts a fresh one. Its log is kept with the run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from engines.adapters.openai.engine import OPTIONS as CLIENT_OPTIONS
from engines.adapters.openai.engine import AllRequestsFailed, Client, OpenAIEngine, _process_tree
from engines.adapters.openai.engine import parse_options as client_options
from engines.adapters.openai.server_process import ServerDied, ServerProcess
from engines.base import GenerateResult, LoadInfo, SpecError
from store.safe import shown

SERVER_OPTIONS = {
    "port": "TCP port on 127.0.0.1 (default: a free one)",
    "ready_timeout_s": "seconds the server may take to load before the run fails (default 600)",
    "server_args": "extra command-line flags for the server, a list, e.g. '[\"--no-cont-batching\"]'",
}


def _split(options: dict[str, Any], server_keys: dict[str, str], name: str,
           write_flags: tuple[str, ...] = ()) -> tuple[dict, dict]:  # fmt: skip
    server = {k: v for k, v in options.items() if k in server_keys}
    client = {k: v for k, v in options.items() if k not in server_keys}
    for key in ("server_pid",):
        if key in client:
            raise SpecError(f"{name} starts its own server, so --opt {key} does not apply; leave it out")
    unknown = [k for k in client if k not in CLIENT_OPTIONS]
    if unknown:
        known = ", ".join([*server_keys, *(k for k in CLIENT_OPTIONS if k != "server_pid")])
        raise SpecError(f"unknown {name} option {unknown[0][:40]!r} (known: {known})")
    client_options(client, name)  # the client's values too, before a server is built or started
    check_count(server, "port", name, 1, 65535)
    args = server.get("server_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a and len(a) < 4096 for a in args):
        raise SpecError(f"{name} option server_args must be a list of strings, e.g. '[\"--no-cont-batching\"]'")
    check_server_paths(args, name, write_flags)
    t = server.get("ready_timeout_s", 600)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 86400:
        raise SpecError(f"{name} option ready_timeout_s must be seconds from 0 to 86400, got {str(t)[:40]!r}")
    return server, client


def check_server_paths(args: list[str], name: str, write_flags: tuple[str, ...]) -> None:
    """server_args go to the server as given, so a path in them could be a precious file: a flag the server
    writes through (write_flags) may not name an existing file, and no argument may name a SQLite database
    (codebench's own, or anyone's)."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if (eq and flag in write_flags) or (arg in write_flags and i + 1 < len(args)):
            target = value if eq else args[i + 1]
            if os.path.lexists(target):
                raise SpecError(f"{name} option server_args: {flag} would write to an existing file "
                                f"({shown(target, 80)}); leave it out or name a new file")  # fmt: skip
        for candidate in (arg, value) if eq else (arg,):
            if _is_sqlite(candidate):
                raise SpecError(f"{name} option server_args names a SQLite database ({shown(candidate, 80)}); "
                                "leave it out or name a new file")  # fmt: skip


def _is_sqlite(path: str) -> bool:
    try:
        if not os.path.isfile(path):  # a FIFO or a terminal would block the read
            return False
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\0"
    except (OSError, ValueError):
        return False


def check_count(options: dict[str, Any], key: str, name: str, lo: int, hi: int) -> None:
    """A whole-number option within [lo, hi], if given."""
    v = options.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
        what = "a positive whole number" if lo == 1 else f"a whole number >= {lo}"
        raise SpecError(f"{name} option {key} must be {what}, got {str(v)[:40]!r}")


class ServedEngine(OpenAIEngine):
    """Subclasses say how to start their server (`_server`), check its options (`check_server_options`) and
    say what it runs (`_describe`)."""

    server_options: dict[str, str] = {}
    write_flags: tuple[str, ...] = ()  # the server's flags that name a file it writes

    @classmethod
    def split_options(cls, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the server's options, the client's), each checked: a bad one is a one-line SpecError."""
        server, client = _split(options, {**SERVER_OPTIONS, **cls.server_options}, cls.name, cls.write_flags)
        cls.check_server_options(server)
        return server, client

    @classmethod
    def check_server_options(cls, server: dict[str, Any]) -> None:
        pass

    def load(self, model_dir: str, device: str) -> LoadInfo:
        t0 = time.perf_counter()
        self.server_opts, client = self.split_options(self.config.get("options") or {})
        tok = Path(model_dir) / "tokenizer.json"
        if "tokenizer" not in client and tok.is_file():
            client["tokenizer"] = str(tok)
        self.server = self._server(model_dir, device)
        prepare_s = time.perf_counter() - t0
        ready_s = self.server.start()
        self.config = {**self.config, "options": {**client, "server_pid": self.server.pid}}
        try:
            info = super().load(self.server.url, device)
        except BaseException:
            self.server.stop()
            raise
        info.load_s = time.perf_counter() - t0
        info.device = device
        info.extra["server"] = {"engine": self.name, "argv": self.server.argv, "prepare_s": round(prepare_s, 3),
                                "ready_s": round(ready_s, 3), **self._describe()}  # fmt: skip
        info.extra["server_log"] = self.server.log_tail()
        return info

    def before_cell(self) -> None:
        """A server that died in the last cell is started again before this one (outside its timing)."""
        if not self.server.alive():
            self.server.stop()  # what the dead server started (vLLM's engine core and workers) goes first
            self.server.start()  # on a fresh free port unless --opt port fixed one
            self.url = self.server.url
            self.client = Client(self.url, float(self.opts["connect_timeout_s"]), self.opts.get("api_key"))
            self.server_pids = _process_tree(self.server.pid, [])

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerateResult:
        if not self.server.alive():
            self.before_cell()
        try:
            res = super().generate(prompts, max_new_tokens)
        except AllRequestsFailed as exc:
            self._check_alive(exc)
            raise
        self._check_alive(None)
        return res

    def _check_alive(self, exc: BaseException | None) -> None:
        if exc is not None:
            time.sleep(0.05)  # a dying server's requests fail a moment before its exit shows
        if not self.server.alive():
            why = self.server.how_it_ended()
            self.server.stop()  # its children, now, not at the next cell
            raise ServerDied(f"{self.name} {why} during the cell") from exc

    def unload(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.close()

    def _server(self, model_dir: str, device: str) -> ServerProcess:  # pragma: no cover - interface
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        return {}
