"""A cell's prompts and workload scores, computed in a child process for workers that keep numpy out.

Prompt drawing uses numpy's random generator, and a process that has imported numpy runs llama.cpp's decode 2-3 %
slower (engines/adapters/llamacpp/bindings.py). The llama.cpp worker therefore asks this child, started when the
worker loads and ended when it closes the child's stdin, for the same functions it would call itself.
Protocol: one JSON request per line on stdin, {"fn": name, "args": [...]}; one JSON reply per line on stdout,
{"ok": result} or {"error": type name, "message": text}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from engines.base import SpecError


def _functions() -> dict[str, Any]:
    from pathlib import Path

    from engines.models.prompt_sources import prompts_for
    from engines.quality.workload_scores import score_cell

    def prompts(tokenizer_file: str, *args: Any) -> list[list[int]]:
        return prompts_for(Path(tokenizer_file), *args)

    return {"prompts": prompts, "score": score_cell}


class PromptProcess:
    """The worker's side of the child: call(name, *args) returns what the function returned there, and raises
    SpecError for its SpecErrors (a bad workload is the user's to fix) and RuntimeError for anything else."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the child now (the worker does so before it caps its own address space, which a child inherits)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "engines.harness.prompt_process"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, env=os.environ.copy())  # fmt: skip

    def call(self, fn: str, *args: Any) -> Any:
        self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"fn": fn, "args": args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError as exc:
            raise RuntimeError(f"the prompt process is gone ({type(exc).__name__})") from None
        if not line:
            raise RuntimeError(f"the prompt process exited with code {self.proc.wait()}; see the worker log")
        reply = json.loads(line)
        if "ok" in reply:
            return reply["ok"]
        if reply["error"] == "SpecError":
            raise SpecError(reply["message"])
        raise RuntimeError(f"{reply['error']}: {reply['message']}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def main() -> int:
    functions = _functions()
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints stays off the reply channel
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": functions[request["fn"]](*request["args"])}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the worker, which records it
            reply = {"error": type(exc).__name__, "message": str(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
