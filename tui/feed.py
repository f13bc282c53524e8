"""Event sources for the live screen: a running study, a stored run played back, a synthetic stream.

Each feed is polled by the live screen's timer (5-10 Hz) on the UI thread; nothing here touches a
widget. A study's runner calls `queue.put` from its own thread; `poll` drains the queue in one go.
No textual, no torch: these are plain classes the tests and the benchmark drive directly.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engines.study import events as ev
from tui.replay_requests import request_events

MAX_BATCH = 5000  # events per poll; the rest waits for the next tick so one tick stays short


@dataclass
class FeedInfo:
    """What the live screen shows before the first event: titles, grid and host size."""

    title: str
    model: str = ""
    labels: list[str] = field(default_factory=list)  # one per run, in order
    cells: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # cell index -> (batch, in, out)
    host_mem: int = 0
    host_cpus: int = 0
    estimate_s: float | None = None


class Feed:
    """Base: a queue filled by some thread, drained by `poll`."""

    kind = "feed"
    live = True  # False: a replay (pause/seek apply)

    def __init__(self, info: FeedInfo):
        self.info = info
        self.queue: queue.SimpleQueue[ev.Event] = queue.SimpleQueue()
        self.finished = False

    def put(self, event: ev.Event) -> None:  # the subscriber: any thread
        self.queue.put(event)

    def poll(self) -> list[ev.Event]:
        out: list[ev.Event] = []
        try:
            while len(out) < MAX_BATCH:
                out.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        return out

    def now(self) -> float:
        return time.time()


def _host_size() -> tuple[int, int]:
    import os

    import psutil

    return psutil.virtual_memory().total, os.cpu_count() or 1


class StudyFeed(Feed):
    """Runs engines.harness.runner.Runner (the CLI's runner) in a worker thread; `run` is that thread's body."""

    kind = "study"

    def __init__(self, spec: Any, db_path: str | None, estimate_s: float | None = None, executor: Any = None):
        mem, cpus = _host_size()
        cells = {i: (c.batch, c.input_len, c.output_len) for i, c in enumerate(spec.cells())}
        labels = [r.label() for r in spec.runs]
        title = f"study {spec.name}" if spec.name else "study"
        super().__init__(FeedInfo(title, spec.model, labels, cells, mem, cpus, estimate_s))
        self.spec = spec
        self.db_path = db_path
        self.executor = executor  # connected by the preflight
        self.cancel = threading.Event()

    def run(self) -> Any:
        """Thread body: returns the runner's StudyResult. Touches no widget."""
        from engines.harness.runner import Runner
        from store.db import open_db

        db = open_db(self.db_path, create=True)
        try:
            return Runner(self.spec, db, subscribers=[self.put], cancel=self.cancel, executor=self.executor).run()
        finally:
            db.close()
            self.finished = True


class SyntheticFeed(Feed):
    """A steady stream of realistic events at `rate` per second, from a thread (the UI benchmark)."""

    kind = "synthetic"

    def __init__(self, rate: float = 50.0, cells: int = 200, gpus: int = 2):
        grid = {i: (1 << (i % 6), 32 << (i // 6 % 4), 32) for i in range(cells)}
        super().__init__(FeedInfo("synthetic stream", "tiny", ["synthetic engine"], grid, 64 << 30, 16))
        self.rate, self.n_cells, self.gpus = rate, cells, gpus
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> int:
        run_id, t0 = "synthetic", time.time()
        self.put(ev.RunStarted(run_id, t0, label="synthetic engine", cells_total=self.n_cells))
        period, k, index = 1.0 / self.rate, 0, 0
        next_t = time.monotonic()
        while not self.stop.is_set() and index < self.n_cells:
            t = time.time()
            phase = k % 10
            if phase == 0:
                self.put(ev.CellStarted(run_id, t, index=index, label=f"cell {index}"))
            elif phase < 8:
                self.put(ev.Progress(run_id, t, index=index, done=phase, total=7, tokens_per_s=100 + (k * 37) % 90))
            elif phase == 8:
                gpus = [{"index": g, "mem_used": (10 + k % 7) << 30, "mem_total": 80 << 30, "util": k % 100,
                         "power_w": 200.0 + k % 50} for g in range(self.gpus)]  # fmt: skip
                self.put(ev.TelemetrySample(run_id, t, cpu_percent=150.0, rss_bytes=(2 + k % 3) << 30, gpus=gpus))
            else:
                lat = 0.05 + (k % 13) / 100
                self.put(ev.CellFinished(run_id, t, index=index, status="oom" if k % 70 == 69 else "done",
                                         result={"repeats": [{"latencies_s": [lat, lat * 1.01]}],
                                                 "peak_rss_bytes": 3 << 30}))  # fmt: skip
                index += 1
            k += 1
            self.sent += 1
            next_t += period
            self.stop.wait(max(0.0, next_t - time.monotonic()))
        self.put(ev.RunFinished(run_id, time.time(), status="done"))
        self.finished = True
        return self.sent


class ScriptedFeed(Feed):
    """A fixed list of events, delivered `per_poll` at a time: deterministic live-screen tests."""

    kind = "scripted"

    def __init__(self, info: FeedInfo, events: list[ev.Event], per_poll: int | None = None):
        super().__init__(info)
        self.events = list(events)
        self.per_poll = per_poll
        self._clock = events[0].t if events else 0.0

    def poll(self) -> list[ev.Event]:
        n = len(self.events) if self.per_poll is None else self.per_poll
        out, self.events = self.events[:n], self.events[n:]
        if out:
            self._clock = out[-1].t
        if not self.events:
            self.finished = True
        return out

    def now(self) -> float:
        return self._clock


class ReplayFeed(Feed):
    """A stored run as a timeline: telemetry samples and cells in stored order (by finished_at).

    The clock runs at `speed` times real time; pause stops it, seek moves it. Seeking backwards
    returns `reset=True` from `poll_reset` so the screen rebuilds its state from the start.
    """

    kind = "replay"
    live = False

    def __init__(self, result: Any, speed: float | None = None):
        run = result.run
        host = run.get("host") or {}
        cells = {c["idx"]: (c["batch"], c["input_len"], c["output_len"]) for c in result.cells}
        title = f"replay {result.short_id}" + (f" · {run['name']}" if run.get("name") else "")
        super().__init__(FeedInfo(title, run["model"], [run["label"]], cells, host.get("mem_total") or 0,
                                  host.get("cpu_logical") or 0))  # fmt: skip
        self.timeline = timeline(result)
        self.start = self.timeline[0].t if self.timeline else 0.0
        self.end = self.timeline[-1].t if self.timeline else 0.0
        span = max(self.end - self.start, 0.001)
        self.speed = speed or max(1.0, round(span / 20.0))  # a whole run plays in about 20 s
        self.paused = False
        self.position = self.start
        self._next = 0  # index of the first event not yet delivered
        self._last = time.monotonic()
        self.reset = False

    @property
    def duration(self) -> float:
        return self.end - self.start

    def _advance_clock(self) -> None:
        mono = time.monotonic()
        if not self.paused and not self.finished:
            self.position = min(self.end, self.position + (mono - self._last) * self.speed)
        self._last = mono

    def poll(self) -> list[ev.Event]:
        self._advance_clock()
        out = []
        while self._next < len(self.timeline) and self.timeline[self._next].t <= self.position:
            out.append(self.timeline[self._next])
            self._next += 1
        if self._next >= len(self.timeline):
            self.finished = True
        return out

    def seek(self, position: float) -> None:
        """Move the clock; the next poll delivers from the start again when moving backwards."""
        position = min(max(position, self.start), self.end)
        if position < self.position:
            self._next = 0
            self.reset = True
        self.position = position
        self.finished = False
        self._last = time.monotonic()

    def now(self) -> float:
        return self.position

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self._last = time.monotonic()


def timeline(result: Any) -> list[ev.Event]:
    """The events a stored run would have sent, in time order."""
    run = result.run
    run_id, t0 = run["id"], run["created_at"]
    out: list[ev.Event] = [ev.RunStarted(run_id, t0, label=run["label"], cells_total=run.get("cells_total") or 0)]
    rt = run.get("runtime") or {}
    if rt:
        first = min((c["started_at"] for c in result.cells if c.get("started_at")), default=t0)
        out.append(ev.Loaded(run_id, max(t0, first - 1e-3), load_s=rt.get("load_s") or 0.0, device=run.get("device") or "",
                             dtype=rt.get("dtype") or "", weight_bytes=rt.get("weight_bytes") or 0))  # fmt: skip
    for c in sorted(result.cells, key=lambda c: (c.get("finished_at") or t0, c["idx"])):
        end = c.get("finished_at") or t0
        start = c.get("started_at") or end
        label = f"b={c['batch']} in={c['input_len']} out={c['output_len']}"
        if c["status"] not in ("skipped",):
            out.append(ev.CellStarted(run_id, start, index=c["idx"], label=label))
        if c["status"] == "done" and (c.get("metrics") or {}).get("serving"):  # a serving cell's request strip
            out.extend(request_events(run_id, c))
        res = {k: c.get(k) for k in ("repeats", "peak_rss_bytes", "peak_gpu_bytes", "peak_nvml_bytes", "metrics", "flags")}
        out.append(ev.CellFinished(run_id, end, index=c["idx"], status=c["status"], result=res, error=c.get("error") or ""))
    for s in result.telemetry:
        out.append(ev.TelemetrySample(run_id, s["t"], cpu_percent=s.get("cpu_percent") or 0.0,
                                      rss_bytes=s.get("rss_bytes") or 0, gpus=s.get("gpus") or []))  # fmt: skip
    end = run.get("finished_at")
    if end:
        out.append(ev.RunFinished(run_id, end, status=result.status, error=run.get("error") or ""))
    out.sort(key=lambda e: e.t)  # stable: equal times keep the order above
    return out
