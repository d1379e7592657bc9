"""A replica's reply traces (`edge/trace.py`): each kept `keep_s` after its end, at
most `max_traces`; the sweep reads only the traces begun more than `keep_s` ago.
The clock is the edge here: a hand-moved one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.edge import trace
from gateway.edge.trace import Traces

KEEP_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def pass_(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    hands = Clock()
    monkeypatch.setattr(trace, "time", SimpleNamespace(monotonic=hands.monotonic))
    return hands


def test_an_ended_trace_is_kept_its_time_then_dropped(clock: Clock) -> None:
    traces = Traces(keep_s=KEEP_S)
    traces.begin("a", "alice").end()
    clock.pass_(KEEP_S - 1)
    assert traces.get("a") is not None
    clock.pass_(2)
    assert traces.get("a") is None


def test_a_running_trace_is_never_dropped_and_does_not_stop_the_sweep(clock: Clock) -> None:
    traces = Traces(keep_s=KEEP_S)
    running = traces.begin("long", "alice")  # a reply that runs past keep_s
    traces.begin("short", "alice").end()
    clock.pass_(KEEP_S + 1)
    recent = traces.begin("recent", "bob")
    recent.end()
    assert traces.get("short") is None  # begun after the running one, ended long ago
    assert traces.get("long") is running  # still running: kept
    assert traces.get("recent") is recent  # ended just now: kept
    running.end()
    clock.pass_(KEEP_S + 1)
    assert traces.get("long") is None and traces.get("recent") is None


def test_the_sweep_runs_at_most_once_a_second(clock: Clock) -> None:
    traces = Traces(keep_s=KEEP_S)
    traces.begin("a", "alice").end()
    clock.pass_(KEEP_S - 0.5)
    assert traces.get("a") is not None  # a sweep: nothing old enough
    clock.pass_(0.9)
    assert traces.get("a") is not None  # old enough, but the last sweep was 0.9 s ago
    clock.pass_(0.2)
    assert traces.get("a") is None


def test_a_trace_begun_again_is_swept_by_its_new_beginning(clock: Clock) -> None:
    traces = Traces(keep_s=KEEP_S)
    traces.begin("a", "alice")  # left running
    traces.begin("b", "alice").end()
    clock.pass_(KEEP_S - 0.2)
    assert traces.get("b") is not None  # a sweep: `b` not old enough yet
    again = traces.begin("a", "alice")  # the same message answered again (no sweep)
    clock.pass_(1.1)
    # `a` now stands where it began again, behind `b`: the sweep drops `b` (ended
    # long ago), then stops at the new `a`.  Had `a` kept its first place, the
    # sweep would have stopped there, at a trace begun just now, and kept `b`.
    assert traces.get("b") is None
    assert traces.get("a") is again


def test_at_most_max_traces_the_oldest_ended_first() -> None:
    traces = Traces(max_traces=3, keep_s=KEEP_S)
    first = traces.begin("m0", "alice")
    for index in range(1, 5):
        traces.begin(f"m{index}", "alice")
    assert [traces.get(f"m{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert first.ended_at is not None  # ended when pushed out: its listeners are told


def test_two_users_replies_under_one_message_id_are_two_traces(clock: Clock) -> None:
    """Message ids are the clients': one user's reply cannot take another's trace."""
    traces = Traces(keep_s=KEEP_S)
    alices = traces.begin("m", "alice")
    bobs = traces.begin("m", "bob")
    assert traces.get("m", "alice") is alices and traces.get("m", "bob") is bobs
    assert traces.get("m", "carol") is None
    assert traces.get("m") is bobs  # an admin's view: the newest
    assert not alices.ended_at  # not ended by bob's


def test_past_the_bound_ended_traces_go_before_running_ones(clock: Clock) -> None:
    traces = Traces(max_traces=3, keep_s=KEEP_S)
    running = traces.begin("a", "alice")  # the oldest, still running
    _, queue = running.listen()
    traces.begin("b", "alice").end()
    traces.begin("c", "bob").end()
    traces.begin("d", "bob")  # past the bound: "b" goes, not the running "a"
    assert traces.get("b") is None and traces.get("a") is running
    assert queue.empty() and running.ended_at is None  # its listener still follows it
    traces.begin("e", "carol")  # "c" goes
    traces.begin("f", "carol")  # all running: the oldest goes, its listener ended
    assert traces.get("a") is None and queue.get_nowait() is None
