"""Prompts and scores from the child process that numpy-free workers (llama.cpp) ask instead of drawing them."""

from __future__ import annotations

import pytest

from engines.base import SpecError
from engines.harness.prompt_process import PromptProcess
from engines.models.prompt_sources import prompts_for
from engines.quality.workload_scores import score_cell


@pytest.fixture()
def side():
    p = PromptProcess()
    yield p
    p.close()


def test_the_child_draws_the_prompts_and_scores_this_process_would(tiny_model, side):
    tok = tiny_model / "tokenizer.json"
    for workload, batch, length, seed in ((None, 3, 24, 5), ({"kind": "fim"}, 2, 64, 1)):
        want = prompts_for(tok, workload, batch, length, seed)
        assert side.call("prompts", str(tok), workload, batch, length, seed, None) == want
    answers = [[5, 6, 7]] * 2
    assert side.call("score", str(tok), {"kind": "fim"}, 2, 64, 1, None, answers) == \
        score_cell(str(tok), {"kind": "fim"}, 2, 64, 1, None, answers)  # fmt: skip


def test_errors_come_back_by_kind_and_a_dead_child_is_replaced(tiny_model, side, tmp_path):
    tok = str(tiny_model / "tokenizer.json")
    with pytest.raises(SpecError, match="missing.jsonl"):  # the user's to fix: a one-line error, as in-process
        side.call("prompts", tok, {"kind": "jsonl", "path": str(tmp_path / "missing.jsonl")}, 1, 16, 0, None)
    with pytest.raises(RuntimeError, match="KeyError"):
        side.call("no-such-function")
    first = side.proc.pid
    side.proc.kill()
    side.proc.wait()
    assert len(side.call("prompts", tok, None, 1, 16, 0, None)[0]) == 16
    assert side.proc.pid != first
    proc = side.proc
    side.close()
    assert proc.returncode == 0  # it ends when its stdin closes
