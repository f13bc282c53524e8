"""Folding events into the live screen's state: runs on several Ray nodes at once."""

from __future__ import annotations

from engines.study import events as ev
from tui.live_state import LiveState


def _sample(run_id: str, t: float, cpu: float, rss: int, gpus: list) -> ev.TelemetrySample:
    return ev.TelemetrySample(run_id, t, cpu_percent=cpu, rss_bytes=rss, gpus=gpus)


def test_gpus_of_two_nodes_are_two_series_and_host_figures_add_up():
    state = LiveState({0: (1, 16, 8)}, ["a", "b"])
    for label, run in (("a", "r1"), ("b", "r2")):
        state.apply(ev.RunStarted(run, 0.0, label=label, cells_total=1))
    state.apply(_sample("r1", 1.0, 50.0, 100, [{"index": 0, "mem_used": 10, "mem_total": 80, "node": "n1"}]))
    state.apply(_sample("r2", 1.1, 70.0, 300, [{"index": 0, "mem_used": 30, "mem_total": 80, "node": "n2"}]))
    state.apply(_sample("r1", 1.2, 60.0, 200, [{"index": 0, "mem_used": 20, "mem_total": 80, "node": "n1"}]))

    assert sorted(state.gpus) == [("n1", 0), ("n2", 0)]
    assert [state.gpus[k].mem_used for k in sorted(state.gpus)] == [20, 30]
    assert state.gpus[("n2", 0)].label == "n2 GPU0"
    assert (state.cpu_now, state.rss_now) == (130.0, 500), "the latest sample of each run, summed"

    state.apply(ev.RunFinished("r2", 2.0, status="done"))
    state.apply(_sample("r1", 2.1, 40.0, 200, []))
    assert (state.cpu_now, state.rss_now) == (40.0, 200), "a finished run no longer counts"


def test_local_gpus_keep_their_plain_labels():
    state = LiveState({0: (1, 16, 8)}, ["a"])
    state.apply(ev.RunStarted("r1", 0.0, label="a", cells_total=1))
    state.apply(_sample("r1", 1.0, 10.0, 1, [{"index": 1, "mem_used": 5, "mem_total": 80}]))
    assert [g.label for g in state.gpus.values()] == ["GPU1"]
