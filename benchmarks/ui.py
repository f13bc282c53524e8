"""Dashboard responsiveness, measured on a real terminal (a pty), not headless:

1. time from process start to the first painted frame, for the dashboard and for a minimal Textual
   app started the same way (and through the `codebench-tui` command line);
2. the longest event-loop stall while a synthetic run streams 50 events/s through the live screen's
   queue -> timer -> message path;
3. time to open History on a store of 10,000 runs.

    python benchmarks/ui.py [--repeats 5] [--runs 10000] [--stream-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = (120, 40)
MINIMAL = """
from textual.app import App
from textual.widgets import Footer, Static
class Minimal(App):
    def compose(self):
        yield Static("Model")
        yield Footer()
Minimal().run()
"""
DASHBOARD = "import sys; from tui.app import run_app; sys.exit(run_app(sys.argv[1]))"


def spawn(argv: list[str]) -> tuple[subprocess.Popen, int]:
    """A child on a fresh pty of SIZE; returns (process, master fd)."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True)
    os.close(slave)
    return proc, master


def read_until(master: int, needle: bytes, timeout: float) -> bool:
    buf = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return False
            buf = (buf + chunk)[-8192:]
            if needle in buf:
                return True
    return False


def drain_until_exit(proc: subprocess.Popen, master: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                os.read(master, 65536)
            except OSError:
                break
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def first_frame(argv: list[str], needle: bytes = b"Model") -> float:
    t0 = time.perf_counter()
    proc, master = spawn(argv)
    try:
        if not read_until(master, needle, 30):
            raise RuntimeError(f"no frame with {needle!r} from {argv}")
        return time.perf_counter() - t0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(master)


def make_store(path: Path, runs: int, cells: int = 4) -> None:
    """`runs` runs of `cells` cells each, written with plain SQL (the schema from store.db)."""
    import sqlite3

    from store.db import open_db

    open_db(path, create=True).close()
    con = sqlite3.connect(path)
    t0 = 1_700_000_000.0
    host = json.dumps({"hostname": "bench-host", "cpu": "Test CPU", "cpu_logical": 16})
    spec = json.dumps({"timing": {"warmup": 1, "iters": 2, "repeats": 3}})
    with con:
        con.execute("insert into run_group (id, name, created_at, spec) values ('g', 'bench', ?, '{}')", (t0,))
        con.executemany(
            "insert into run (id, group_id, name, model, engine, label, config, spec, host, runtime, device, status,"
            " error, created_at, finished_at, cells_total, owner_host, owner_pid, owner_started)"
            " values (?, 'g', ?, 'tiny', ?, ?, '{}', ?, ?, '{}', 'cpu', ?, '', ?, ?, ?, '', 0, 0)",
            [(f"{i:032x}", f"run {i}" if i % 7 == 0 else None, ("hf-generate", "llama.cpp")[i % 2],
              ("hf-generate fp32 sdpa", "llama.cpp q8_0")[i % 2], spec, host, ("done", "failed", "cancelled")[i % 3 % 2],
              t0 + i * 60, t0 + i * 60 + 30, cells) for i in range(runs)],
        )  # fmt: skip
        con.executemany(
            "insert into cell (run_id, idx, batch, input_len, output_len, params, status, error, tokens_per_s,"
            " latency_s, repeats, metrics, started_at, finished_at) values (?, ?, ?, 32, 32, '{}', ?, '', ?, ?,"
            " '[]', '{}', ?, ?)",
            [(f"{i:032x}", j, 1 << j, "oom" if (i + j) % 11 == 0 else "done", 100.0 + (i * 7 + j) % 300, 0.3,
              t0 + i * 60 + j, t0 + i * 60 + j + 1) for i in range(runs) for j in range(cells)],
        )  # fmt: skip
    con.close()


# --- child modes: run inside the pty, report to a JSON file -----------------------------------


def child_stream(db: str, out: str, seconds: float, rate: float) -> None:
    from tui.app import make_app
    from tui.feed import SyntheticFeed

    feed = SyntheticFeed(rate=rate, cells=10_000)
    app = make_app(db, feed=feed, preload=False)
    from tui.screens.live import LiveScreen

    stalls: list[float] = []
    events = {"messages": 0}
    init = LiveScreen.Events.__init__

    def counting_init(self, *a, **kw) -> None:  # count the timer's messages as they are made
        events["messages"] += 1
        init(self, *a, **kw)

    LiveScreen.Events.__init__ = counting_init  # type: ignore[method-assign]

    async def pilot(p) -> None:
        await asyncio.sleep(1.0)  # first frame and mount
        events["messages"] = 0
        sent0, applied0 = feed.sent, app.live.state.events
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls.append(time.perf_counter() - t - 0.005)
        feed.stop.set()
        Path(out).write_text(json.dumps({"stalls": stalls, "sent": feed.sent - sent0, "messages": events["messages"],
                                         "applied": app.live.state.events - applied0}))  # fmt: skip
        app.exit()

    app.run(auto_pilot=pilot)


def child_history(db: str, out: str) -> None:
    from tui.app import make_app

    app = make_app(db)

    async def pilot(p) -> None:
        await asyncio.sleep(0.5)
        await app.workers.wait_for_complete()  # preloaded imports: what a user has a moment after start
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await p.press("f4")
        while not getattr(app.screen, "rows", None):
            await asyncio.sleep(0.002)
        await p.pause()  # the page painted
        opened = time.perf_counter() - t0
        t1 = time.perf_counter()
        await p.press("s")  # sort by the next column (name): a new page query
        screen = app.screen
        token = screen._token
        while screen.loaded_at is None or screen._token != token or not screen.rows:
            await asyncio.sleep(0.002)
        await p.pause()
        resorted = time.perf_counter() - t1
        Path(out).write_text(json.dumps({"open_s": opened, "resort_s": resorted, "rows": len(screen.rows),
                                         "total": screen.total}))  # fmt: skip
        app.exit()

    app.run(auto_pilot=pilot)


def run_child(mode: str, *args: str, timeout: float = 120) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    proc, master = spawn([sys.executable, __file__, f"--child-{mode}", out, *args])
    drain_until_exit(proc, master, timeout)
    os.close(master)
    try:
        return json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--stream-s", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--child-stream", nargs=4, metavar=("OUT", "DB", "SECONDS", "RATE"), help=argparse.SUPPRESS)
    p.add_argument("--child-history", nargs=2, metavar=("OUT", "DB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_stream:
        out, db, secs, rate = args.child_stream
        return child_stream(db, out, float(secs), float(rate))
    if args.child_history:
        out, db = args.child_history
        return child_history(db, out)

    tmp = Path(tempfile.mkdtemp(prefix="codebench-ui-bench-"))
    small = tmp / "small.db"
    make_store(small, 20)
    print(f"codebench-tui UI benchmark: {os.cpu_count()} CPUs, terminal {SIZE[0]}x{SIZE[1]} on a pty, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    py = sys.executable
    cases = {
        "minimal Textual app": [py, "-c", MINIMAL],
        "dashboard (run_app)": [py, "-c", DASHBOARD, str(small)],
        "dashboard (codebench-tui CLI)": [py, "-m", "tui.cli", "--db", str(small)],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleaved, so a busy moment hits every case alike
        for name, argv in cases.items():
            times[name].append(first_frame(argv))
    base = statistics.median(times["minimal Textual app"])
    print("\n1. process start -> first painted frame (median of %d; min..max)" % args.repeats)
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"   {name:32s} {med:6.3f} s  ({min(ts):.3f}..{max(ts):.3f})  x{med / base:.2f} of minimal")

    res = run_child("stream", str(tmp / "stream.db"), str(args.stream_s), str(args.rate), timeout=args.stream_s + 60)
    stalls = sorted(res["stalls"])
    p99 = stalls[int(len(stalls) * 0.99)] if stalls else 0.0
    print(f"\n2. live screen fed {res['sent']} events in {args.stream_s:g} s ({res['sent'] / args.stream_s:.0f}/s) "
          f"as {res['messages']} messages ({res['messages'] / args.stream_s:.1f}/s); {res['applied']} applied")  # fmt: skip
    print(f"   event-loop stall: longest {stalls[-1] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"median {statistics.median(stalls) * 1000:.2f} ms over {len(stalls)} probes")  # fmt: skip

    big = tmp / "big.db"
    t = time.perf_counter()
    make_store(big, args.runs)
    built = time.perf_counter() - t
    res = run_child("history", str(big), timeout=120)
    print(f"\n3. History on {res['total']:,} stored runs ({args.runs * 4:,} cells; store built in {built:.1f} s)")
    print(f"   F4 -> first page ({res['rows']} rows) painted: {res['open_s'] * 1000:.0f} ms")
    print(f"   re-sort (s) -> new page painted:          {res['resort_s'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
