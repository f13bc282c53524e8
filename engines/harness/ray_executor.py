"""The Ray executor: each worker runs inside a Ray actor on whichever node has the run's resources.

The actor starts the same `python -m engines.harness.worker` child there that the local executor starts
here, samples psutil and NVML on its own node, and hands events, stderr and samples back in
batches when the parent polls. The parent keeps writing every result, so a lost node costs only
the cell in flight. Imported only when a study names a Ray executor (`pip install "codebench-tui[ray]"`).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import warnings
from typing import Any, Callable

from engines.base import SpecError
from engines.study import commands as cmds
from engines.study import events as ev
from engines.study.schema import EngineRun

# A run waits this long for a node with its resources before it fails (a cluster may be scaling up).
PLACEMENT_TIMEOUT_S = float(os.environ.get("CODEBENCH_RAY_PLACEMENT_TIMEOUT_S", "300"))
_POLL_S = 0.5  # a poll returns as soon as an event arrives; this only bounds idle round trips
_connected: str | None = None
_connect_lock = threading.Lock()


def connect(address: str | None) -> None:
    """Join the cluster once per process: ray://HOST:PORT (Ray Client) or None (one started on this host)."""
    global _connected
    # A Ray call after the session has ended (a relay thread at exit) would otherwise start a new
    # local Ray instance, and Ray 2.60 then writes ~/.ray/auth_token, which turns on token auth for
    # every later `ray start` here. codebench always connects explicitly.
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    try:
        import ray
    except ImportError:
        raise SpecError('the Ray executor needs Ray: pip install "codebench-tui[ray]"') from None
    where = address or "a cluster on this host (started with `ray start --head`)"
    with _connect_lock:
        if ray.is_initialized():
            return
        if address:  # Ray Client retries a closed port for half a minute: ask the socket first
            host, _, port = address[len("ray://"):].rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
            except OSError as exc:
                raise SpecError(f"cannot reach Ray at {where} ({exc.strerror or exc}); start the cluster "
                                "(`ray start --head`) or fix the address") from None
        for attempt in range(3):  # a head that has just started takes client connections a moment later
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
                break
            except (ConnectionError, RuntimeError, ValueError) as exc:
                if attempt == 2 or not address:
                    raise SpecError(f"cannot reach Ray at {where}: {_first_line(exc)}; start the cluster or fix "
                                    "the address") from None
                time.sleep(2)
        _connected = address or "auto"


def resources(run: EngineRun, device: str, cpus_per_rank: int = 1) -> dict[str, float]:
    """What one worker of `run` holds on its node: cores per tensor-parallel rank, and a GPU per rank on
    CUDA (device auto means CUDA when the cluster has GPUs). Ray points CUDA_VISIBLE_DEVICES at them."""
    import ray

    on_gpu = device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    return {"num_cpus": float(run.tp * cpus_per_rank), "num_gpus": float(run.tp if on_gpu else 0)}


class _Relay:
    """The actor's body (a plain class so it can be tested without Ray)."""

    def __init__(self, run_id: str, argv: list[str] | None, telemetry_hz: float, device: str,
                 extra_env: dict[str, str] | None = None):  # fmt: skip
        from engines.harness.worker_client import WorkerClient
        from engines.measure.hardware import fingerprint, resolve_device
        from engines.measure.telemetry import Sampler

        self.client = WorkerClient(run_id, argv=argv, extra_env=extra_env)
        self.samples: queue.Queue = queue.Queue()
        self.host = fingerprint()
        node = self.host["hostname"]  # GPUs of several nodes share indices: the live screen tells them apart by node

        def sink(t: float, cpu: float, rss: int, gpus: list) -> None:
            self.samples.put((t, cpu, rss, [{**g, "node": node} for g in gpus]))

        self.sampler = Sampler(sink, hz=telemetry_hz)
        self.device = resolve_device(device)

    def start(self) -> dict[str, Any]:
        pid = self.client.start()
        self.sampler.watch(pid)
        self.sampler.start()
        import ray

        node = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
        return {"pid": pid, "host": {**self.host, "ray": node}, "device": self.device}

    def watch_also(self, pid: int) -> None:
        assert self.client.proc is not None
        self.sampler.watch(self.client.proc.pid, pid)

    def send(self, cmd: cmds.Command) -> bool:
        return self.client.send(cmd)

    def poll(self, wait_s: float) -> list[tuple]:
        """Everything that arrived since the last poll, after waiting up to `wait_s` for the first item."""
        out: list[tuple] = []
        item = self.client.get(wait_s)
        while item is not None:
            if isinstance(item, ev.Event):
                out.append(("event", ev.encode(item)))
            else:  # WorkerExited
                out.append(("exit", item.returncode, item.stderr_tail))
            item = self.client.get(0)
        while True:
            try:
                out.append(("sample", *self.samples.get_nowait()))
            except queue.Empty:
                return out

    def stderr_tail(self, lines: int = 30) -> str:
        return self.client.stderr_tail(lines)

    def kill(self) -> None:
        self.client.kill()
        self.sampler.stop()

    def close(self, grace_s: float = 10.0) -> None:
        self.client.close(grace_s)
        self.sampler.stop()


class RayWorkerClient:
    """The runner's side of a remote worker: the same methods as engines.harness.worker_client.WorkerClient."""

    remote = True

    def __init__(self, run_id: str, run: EngineRun, device: str, on_sample: Callable[[float, float, int, list], None],
                 *, argv: list[str] | None = None, telemetry_hz: float = 5.0,
                 busy: Callable[[], bool] = lambda: False, cpus_per_rank: int = 1,
                 extra_env: dict[str, str] | None = None, placement_timeout_s: float | None = None):  # fmt: skip
        import ray

        from engines.harness.worker_client import WorkerExited

        self._exited = WorkerExited
        self.run_id = run_id
        self.on_sample = on_sample
        self.events: queue.Queue = queue.Queue()
        self.host: dict[str, Any] = {}
        self.pid = 0
        self.device = device
        self.busy = busy  # other runs of the study hold resources that will come free: keep waiting
        self.placement_timeout_s = placement_timeout_s or PLACEMENT_TIMEOUT_S
        self._tail = ""
        self._done = threading.Event()
        actor_cls = ray.remote(max_concurrency=4, max_restarts=0)(_Relay)
        self.want = resources(run, device, cpus_per_rank)
        self.actor = actor_cls.options(**self.want).remote(run_id, argv, telemetry_hz, device, extra_env)

    def start(self) -> int:
        import ray

        ref = self.actor.start.remote()
        waited = 0.0
        while not ray.wait([ref], timeout=1.0)[0]:
            waited = 0.0 if self.busy() else waited + 1.0
            if waited >= self.placement_timeout_s:
                ray.kill(self.actor)
                raise RuntimeError(f"no Ray node offered {self.want} within {self.placement_timeout_s:g} s "
                                   "(CODEBENCH_RAY_PLACEMENT_TIMEOUT_S); add a node or ask for fewer GPUs")
        try:
            started = ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"the Ray actor did not start: {_first_line(exc)}") from None
        self.pid, self.host, self.device = started["pid"], started["host"], started["device"]
        self.host["ray"]["address"] = _connected
        threading.Thread(target=self._pump, name=f"ray-relay-{self.run_id[:8]}", daemon=True).start()
        return self.pid

    def _pump(self) -> None:
        import ray

        while not self._done.is_set() and ray.is_initialized():
            try:
                batch = ray.get(self.actor.poll.remote(_POLL_S))
            except Exception as exc:  # noqa: BLE001 - node, actor or connection lost: the cell in flight is crashed
                if not self._done.is_set() and ray.is_initialized():
                    self.events.put(self._exited(-9, self._tail, f"Ray node lost ({_first_line(exc)})"))
                return
            for kind, *rest in batch:
                if kind == "event":
                    self.events.put(ev.decode(rest[0]))
                elif kind == "sample":
                    self.on_sample(*rest)
                else:
                    self._tail = rest[1]
                    self.events.put(self._exited(rest[0], rest[1]))
                    return

    def watch_also(self, pid: int) -> None:
        self._call("watch_also", pid)

    def send(self, cmd: cmds.Command) -> bool:
        """Without waiting for the pipe write: the runner waits for the worker's answer anyway, and a
        worker that died arrives as its exit. Saves a round trip per cell. The runner never has two
        commands in flight, so the threaded actor cannot reorder them."""
        try:
            self.actor.send.remote(cmd)
            return True
        except Exception:  # noqa: BLE001 - the actor is gone; its exit or the lost node is reported by the pump
            return False

    def get(self, timeout: float) -> Any:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stderr_tail(self, lines: int = 30) -> str:
        return self._call("stderr_tail", lines) or self._tail

    def kill(self) -> None:
        self._call("kill")
        self._stop()

    def close(self, grace_s: float = 10.0) -> None:
        self._call("close", grace_s, timeout=grace_s + 5)
        self._stop()

    def _stop(self) -> None:
        import ray

        self._done.set()
        try:
            if ray.is_initialized():
                ray.kill(self.actor)
        except Exception:  # noqa: BLE001 - already gone with its node or the session
            pass

    def _call(self, name: str, *args: Any, timeout: float = 30) -> Any:
        import ray

        try:
            return ray.get(getattr(self.actor, name).remote(*args), timeout=timeout) if ray.is_initialized() else None
        except Exception:  # noqa: BLE001 - the actor, its node or the session is gone
            return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
