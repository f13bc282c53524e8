"""What the live screen shows, folded from events: progress, ETA, series, results, log. No widgets here.

Labels, statuses, flags and log lines come from workers, study files and stored runs: they are kept here as
shown (store.safe), so the screen draws nothing a terminal would obey."""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from engines.study import events as ev
from store.safe import LOG, NAME, shown
from store.tables import STATUS_MARK

SERIES = 240  # points kept per time series
STRIP = 40  # latest requests in Live's rolling TTFT / ITL strip
LOG_LINES = 2000
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")  # colours, titles, links


@dataclass
class RunProgress:
    run_id: str
    label: str
    total: int
    finished: int = 0
    counts: Counter = field(default_factory=Counter)
    status: str = "waiting"
    started: float | None = None
    ended: float | None = None
    number: int = 1  # 1-based, in start order: the results table shows it instead of the label


@dataclass
class CellResult:
    run_number: int
    run_label: str
    index: int
    batch: int
    input_len: int
    output_len: int
    status: str
    tokens_per_s: float | None
    latency_s: float | None
    peak_bytes: int | None
    error: str
    flags: list[str] = field(default_factory=list)  # codes of store.flags: why the figure may be shaky
    serving: str = ""  # a serving cell: requests ok, TTFT p99, SLO met and goodput (store.serving.brief)


@dataclass
class GpuSeries:
    index: int
    node: str = ""  # the host of a GPU sampled on a remote node (Ray executor); "" here
    mem_total: int | None = None
    mem_used: int | None = None
    util: float | None = None
    power_w: float | None = None
    mem: deque = field(default_factory=lambda: deque(maxlen=SERIES))
    utils: deque = field(default_factory=lambda: deque(maxlen=SERIES))
    power: deque = field(default_factory=lambda: deque(maxlen=SERIES))

    @property
    def label(self) -> str:
        return f"{shown(self.node, NAME)} GPU{self.index}" if self.node else f"GPU{self.index}"


def _peak(result: dict[str, Any]) -> int | None:
    for key in ("peak_gpu_bytes", "peak_nvml_bytes", "peak_rss_bytes"):  # as store.tables.peak_mem
        if result.get(key):
            return result[key]
    return None


class LiveState:
    def __init__(self, cells: dict[int, tuple[int, int, int]], labels: list[str], host_mem: int = 0,
                 host_cpus: int = 0, estimate_s: float | None = None):  # fmt: skip
        self.cells = cells
        self.expected_runs = max(len(labels), 1)
        self.pending_labels = [shown(label, NAME) for label in labels]
        self.runs: dict[str, RunProgress] = {}
        self.host_mem = host_mem
        self.host_cpus = host_cpus
        self.estimate_s = estimate_s
        self.started: float | None = None
        self.ended: float | None = None
        self.status = "waiting"
        self.current: dict[str, Any] | None = None
        self.tokens: deque[float] = deque(maxlen=SERIES)
        self.ttft_ms: deque[float] = deque(maxlen=STRIP)  # a serving cell's latest requests (ev.Requests)
        self.itl_ms: deque[float] = deque(maxlen=STRIP)
        self.cpu: deque[float] = deque(maxlen=SERIES)
        self.rss: deque[float] = deque(maxlen=SERIES)
        self.cpu_now = 0.0
        self.rss_now = 0
        self.gpus: dict[tuple[str, int], GpuSeries] = {}  # by (node, index)
        self._procs: dict[str, tuple[float, int]] = {}  # latest CPU % and RSS of each run's worker
        self.results: list[CellResult] = []
        self.log: deque[tuple[float, str, str]] = deque(maxlen=LOG_LINES)
        self.log_total = 0  # lines ever logged: the screen writes only the new ones
        self.events = 0
        self.tokens_seen = 0  # points ever added to `tokens` / telemetry samples: what changed since a paint
        self.samples_seen = 0
        self._progress_seen = False  # a replay has no per-minibatch events: plot per-cell tok/s instead
        self._flagged: set[tuple[str, str]] = set()  # (run, flag code) already explained in the log

    # --- folding -----------------------------------------------------------------------

    def _say(self, t: float, level: str, text: str) -> None:
        # Worker stderr carries progress bars: keep what a terminal would show last; any other control shown.
        text = ANSI.sub("", text)
        if "\r" in text:
            text = next((p for p in reversed(text.split("\r")) if p.strip()), "")
        self.log.append((t, level, shown(text.rstrip(), LOG, lines=True)))
        self.log_total += 1

    def apply(self, e: ev.Event) -> None:
        self.events += 1
        run = self.runs.get(e.run_id)
        if isinstance(e, ev.RunStarted):
            if self.started is None:
                self.started = e.t
            self.status = "running"
            label = shown(e.label, NAME)
            run = self.runs[e.run_id] = RunProgress(e.run_id, label, e.cells_total or len(self.cells),
                                                    status="starting", started=e.t, number=len(self.runs) + 1)  # fmt: skip
            if label in self.pending_labels:
                self.pending_labels.remove(label)
            self._say(e.t, "info", f"run {e.run_id[:8]} started: {e.label}, {run.total} cells")
        elif isinstance(e, ev.WorkerStarted):
            self._say(e.t, "info", f"worker pid {e.pid} started" + (f" (attempt {e.attempt})" if e.attempt > 1 else ""))
        elif isinstance(e, ev.Loaded):
            if run:
                run.status = "running"
            mb = f", {e.weight_bytes / 2**20:,.1f} MB weights" if e.weight_bytes else ""
            self._say(e.t, "info", f"loaded in {e.load_s:.2f} s on {e.device or '?'} ({e.dtype or '?'}{mb})")
        elif isinstance(e, ev.CellStarted):
            self.current = {"run": run.label if run else "", "index": e.index, "label": self._cell_label(e.index),
                            "phase": "starting", "done": 0, "total": 0, "tps": None}  # fmt: skip
        elif isinstance(e, ev.Progress):
            if self.current is None or self.current["index"] != e.index:
                self.current = {"run": run.label if run else "", "index": e.index, "label": self._cell_label(e.index)}
            self.current.update(phase=shown(e.phase, NAME), done=e.done, total=e.total, tps=e.tokens_per_s)
            if e.phase == "timed" and e.tokens_per_s:
                self.tokens.append(e.tokens_per_s)
                self.tokens_seen += 1
                self._progress_seen = True
        elif isinstance(e, ev.Requests):
            if self.current is None or self.current["index"] != e.index:
                self.current = {"run": run.label if run else "", "index": e.index, "label": self._cell_label(e.index)}
            self.current["requests"] = (e.in_flight, e.done, e.failed, e.total)
            self.ttft_ms.extend(v for v in e.ttft_ms if isinstance(v, (int, float)) and v >= 0)
            self.itl_ms.extend(v for v in e.itl_ms if isinstance(v, (int, float)) and v >= 0)
        elif isinstance(e, ev.CellFinished):
            self._cell_finished(e, run)
        elif isinstance(e, ev.TelemetrySample):
            self._telemetry(e)
        elif isinstance(e, ev.Log):
            self._say(e.t, e.level, e.message)
        elif isinstance(e, ev.QualityResult):
            value = "n/a" if e.value is None else f"{e.value:.4g}"
            self._say(e.t, "info", f"quality {e.metric}: {value}")
        elif isinstance(e, ev.RunFinished):
            if run:
                run.status, run.ended = shown(e.status, NAME), e.t
            self._procs.pop(e.run_id, None)
            self.current = None
            self._say(e.t, "error" if e.error else "info",
                      f"run {e.run_id[:8]} {e.status}" + (f": {e.error.splitlines()[0]}" if e.error else ""))  # fmt: skip
            if len(self.runs) >= self.expected_runs and all(r.ended for r in self.runs.values()):
                self.finish(e.t, "cancelled" if e.status == "cancelled" else "finished")

    def finish(self, t: float, status: str) -> None:
        self.ended = self.ended or t
        self.status = status

    def _cell_label(self, index: int) -> str:
        b, i, o = self.cells.get(index, (0, 0, 0))
        return f"b={b} in={i} out={o}"

    def _cell_finished(self, e: ev.CellFinished, run: RunProgress | None) -> None:
        from store.metrics import summarise
        from store.serving import brief

        status = shown(e.status, NAME)
        if run:
            run.finished += 1
            run.counts[status] += 1
        b, i, o = self.cells.get(e.index, (0, 0, 0))
        summary = summarise(e.result.get("repeats") or [], b, o) if e.status == "done" else {}
        flags = [f for f in e.result.get("flags") or [] if isinstance(f, dict)]
        self.results.append(CellResult(run.number if run else 0, run.label if run else "", e.index, b, i, o, status,
                                       summary.get("tokens_per_s"), summary.get("latency_s"), _peak(e.result),
                                       e.error, [shown(f.get("code", "?"), NAME) for f in flags],
                                       brief({"metrics": e.result.get("metrics")})))  # fmt: skip
        for f in flags:  # the table has room for the codes only: the first reason of each per run goes to the log
            key = (e.run_id, str(f.get("code")))
            if key not in self._flagged:
                self._flagged.add(key)
                self._say(e.t, "warn", f"⚑ {f.get('code')}: {f.get('reason', '')} ({self._cell_label(e.index)})")
        if not self._progress_seen and summary.get("tokens_per_s"):
            self.tokens.append(summary["tokens_per_s"])
            self.tokens_seen += 1
        if self.current and self.current.get("index") == e.index:
            self.current = None
        if e.status != "done":
            why = f": {e.error.splitlines()[0]}" if e.error else ""
            self._say(e.t, "warn", f"{self._cell_label(e.index)} {STATUS_MARK.get(e.status, e.status)}{why}")

    def _telemetry(self, e: ev.TelemetrySample) -> None:
        self.samples_seen += 1
        # Runs on several nodes at once (Ray) sample separately: the gauges show their sum.
        self._procs[e.run_id] = (e.cpu_percent, e.rss_bytes)
        self.cpu_now = sum(c for c, _ in self._procs.values())
        self.rss_now = sum(r for _, r in self._procs.values())
        self.cpu.append(self.cpu_now)
        self.rss.append(self.rss_now / 2**30)
        for g in e.gpus:
            key = (g.get("node") or "", g.get("index", 0))
            s = self.gpus.setdefault(key, GpuSeries(key[1], key[0]))
            s.mem_total = g.get("mem_total") or s.mem_total
            s.mem_used, s.util, s.power_w = g.get("mem_used"), g.get("util"), g.get("power_w")
            if s.mem_used is not None:
                s.mem.append(s.mem_used / 2**30)
            if s.util is not None:
                s.utils.append(float(s.util))
            if s.power_w is not None:
                s.power.append(float(s.power_w))

    # --- derived -----------------------------------------------------------------------

    @property
    def total_cells(self) -> int:
        known = sum(r.total for r in self.runs.values())
        return known + len(self.cells) * max(self.expected_runs - len(self.runs), 0)

    @property
    def finished_cells(self) -> int:
        return sum(r.finished for r in self.runs.values())

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.ended or now) - self.started)

    def eta(self, now: float) -> float | None:
        """Seconds left: the pace so far, or the setup estimate before the first cell finishes."""
        if self.ended is not None:
            return 0.0
        done, total = self.finished_cells, self.total_cells
        elapsed = self.elapsed(now)
        if done and elapsed > 0:
            return elapsed / done * max(total - done, 0)
        if self.estimate_s is not None:
            return max(self.estimate_s - elapsed, 0.0)
        return None

    def run_eta(self, run: RunProgress, now: float) -> float | None:
        if run.ended is not None or not run.started:
            return None
        if not run.finished:
            return None
        spent = now - run.started
        return spent / run.finished * max(run.total - run.finished, 0)

    def best_tokens(self) -> float | None:
        return max((r.tokens_per_s for r in self.results if r.tokens_per_s), default=None)
