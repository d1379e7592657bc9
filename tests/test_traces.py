"""A replica's reply traces (`edge/trace.py`): each kept `keep_s` after its end, at
most `max_traces`; the sweep reads only the traces begun more than `keep_s` ago."""

from __future__ import annotations

import time

import pytest

from gateway.edge import trace
from gateway.edge.trace import Traces

KEEP_S = 0.2


@pytest.fixture(autouse=True)
def sweep_at_every_look(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "SWEEP_EVERY_S", 0.0)


def test_an_ended_trace_is_kept_its_time_then_dropped() -> None:
    traces = Traces(keep_s=KEEP_S)
    traces.begin("a", "alice").end()
    assert traces.get("a") is not None  # just ended
    time.sleep(KEEP_S * 1.5)
    assert traces.get("a") is None


def test_a_running_trace_is_never_dropped_and_does_not_stop_the_sweep() -> None:
    traces = Traces(keep_s=KEEP_S)
    running = traces.begin("long", "alice")  # a reply that runs past keep_s
    ended = traces.begin("short", "alice")
    ended.end()
    time.sleep(KEEP_S * 1.5)
    recent = traces.begin("recent", "bob")
    recent.end()
    assert traces.get("short") is None  # begun after the running one, ended long ago
    assert traces.get("long") is running  # still running: kept
    assert traces.get("recent") is recent  # ended just now: kept
    running.end()
    time.sleep(KEEP_S * 1.5)
    assert traces.get("long") is None and traces.get("recent") is None


def test_a_trace_begun_again_is_swept_by_its_new_beginning() -> None:
    traces = Traces(keep_s=KEEP_S)
    traces.begin("a", "alice").end()
    traces.begin("b", "alice").end()
    time.sleep(KEEP_S * 1.5)
    again = traces.begin("a", "alice")  # the same message answered again: the newest
    again.end()
    assert traces.get("b") is None
    assert traces.get("a") is again


def test_at_most_max_traces_the_oldest_ended_first() -> None:
    traces = Traces(max_traces=3, keep_s=60.0)
    first = traces.begin("m0", "alice")
    for index in range(1, 5):
        traces.begin(f"m{index}", "alice")
    assert [traces.get(f"m{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert first.ended_at is not None  # ended when pushed out: its listeners are told
