"""Every event of a reply carries its own `seq`, increasing, the ending included.

A client that reconnects asks for what follows the last `seq` it saw, so two
events with one number lose one of them.  The endings the core makes up itself
(a stop, a crash) are numbered after *every* event before them, whatever its kind:
reasoning, status and sources too, not only text (the bug: a stop after
reasoning deltas reused the number of the last one).

Properties over random replies: any mix of text, reasoning, status and sources,
ended by the upstream (finished or failed), a stop at any point (even while the
upstream is being opened), or a crash at any point.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat.reply import last_seq, reply_events
from gateway.chat.runner import ReplyRunner
from gateway.chat.running import Running, RunningReplies
from gateway.errors import UpstreamError
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    SourcesFound,
    StatusChanged,
    TextDelta,
    Usage,
    UserTyping,
)
from gateway.fanout.presence import Presence
from gateway.upstream import Chunk

CHAT, MESSAGE = "c1", "a1"
KINDS = ("text", "reasoning", "status", "sources")
ENDINGS = ("finished", "failed", "stopped", "stopped_opening", "crashed")


class RecordingHub:
    """What a running reply publishes, in order; the bus does nothing."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.bus = Quiet()

    def publish(self, rooms: Sequence[str], event: Event) -> None:
        self.published.append(event)

    def reply_event(self, user_id: str, rooms: Sequence[str], event: Event) -> None:
        """A stored reply's event (the replay buffer is not this test's)."""
        self.publish(rooms, event)


class Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def numbered(kind: str, seq: int) -> Event:
    if kind == "text":
        return TextDelta(CHAT, MESSAGE, seq, f"t{seq}")
    if kind == "reasoning":
        return ReasoningDelta(CHAT, MESSAGE, seq, f"r{seq}")
    if kind == "status":
        return StatusChanged(CHAT, MESSAGE, seq, "Searching", seq % 2 == 0)
    return SourcesFound(CHAT, MESSAGE, seq, [{"source": {"name": f"s{seq}"}}])


async def upstream(
    kinds: list[str], ending: str, cut: int, parked: asyncio.Event
) -> AsyncGenerator[Event, None]:
    """A reply's events as the core's producers number them: 0, then one per event.
    A stop or a crash comes after the first `cut` events."""
    yield ReplyStarted(CHAT, MESSAGE, 0, "alice", "u1", "m", 1700000000.0)
    shown = kinds[:cut] if ending in ("stopped", "crashed") else kinds
    for seq, kind in enumerate(shown, start=1):
        yield numbered(kind, seq)
    seq = len(shown) + 1
    if ending == "stopped":
        parked.set()
        await asyncio.Event().wait()  # until the stop
    if ending == "crashed":
        raise RuntimeError("a bug in the middle of a reply")
    if ending == "failed":
        yield ReplyFailed(CHAT, MESSAGE, seq, "upstream_error", "The model server failed")
    else:
        yield ReplyFinished(CHAT, MESSAGE, seq, "", Usage(1, 1), "stop", 0.1)


async def generated(kinds: list[str], ending: str, cut: int) -> list[Event]:
    hub = RecordingHub()
    registry = RunningReplies(cast(Any, None), cast(Any, hub))
    runner = ReplyRunner(cast(Any, None), cast(Any, hub), registry, Presence(), 1.0)
    running = Running("task-1", CHAT, MESSAGE, "alice", ["user:alice"])
    parked = asyncio.Event()

    async def opening() -> AsyncGenerator[Event, None]:
        if ending == "stopped_opening":
            parked.set()
            await asyncio.Event().wait()
        return upstream(kinds, ending, cut, parked)

    runner.start(running, opening)
    task = running.task
    assert task is not None
    if ending.startswith("stopped"):
        await parked.wait()
        running.cancelled_by_user = True
        task.cancel()
    await task
    return hub.published


def assert_numbered(events: list[Event]) -> None:
    seqs = [cast(Any, event).seq for event in events]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    assert len(set(seqs)) == len(seqs), seqs


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), max_size=12),
    ending=st.sampled_from(ENDINGS),
    cut=st.integers(min_value=0, max_value=12),
)
def test_generate_numbers_every_event_once_increasing(
    kinds: list[str], ending: str, cut: int
) -> None:
    published = asyncio.run(generated(kinds, ending, cut))
    assert_numbered(published)
    # One ending, last; what came before it is what the upstream produced.
    *body, end = published
    assert isinstance(end, ReplyFinished | ReplyFailed)
    assert not any(isinstance(event, ReplyFinished | ReplyFailed) for event in body)
    if ending.startswith("stopped"):
        assert isinstance(end, ReplyFinished) and end.cancelled
    if ending == "crashed":
        assert isinstance(end, ReplyFailed) and end.code == "internal_error"
    expected = 0 if ending == "stopped_opening" else 1 + (
        min(cut, len(kinds)) if ending in ("stopped", "crashed") else len(kinds)
    )
    assert len(body) == expected


class FakeStream:
    """Upstream chunks, then an end or a failure."""

    def __init__(self, chunks: list[Chunk], fails: bool) -> None:
        self._chunks = chunks
        self._fails = fails

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        for chunk in self._chunks:
            yield chunk
        if self._fails:
            raise UpstreamError("The model server for 'm' broke off the reply")

    async def aclose(self) -> None:
        return None


CHUNKS = st.builds(
    Chunk,
    text=st.sampled_from(["", "a", "bc"]),
    reasoning=st.sampled_from(["", "r"]),
    finish_reason=st.sampled_from([None, "stop"]),
)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(CHUNKS, max_size=10), fails=st.booleans())
def test_reply_events_number_every_event_from_zero(chunks: list[Chunk], fails: bool) -> None:
    async def run() -> list[Event]:
        events = reply_events(
            FakeStream(chunks, fails),
            chat_id=CHAT,
            message_id=MESSAGE,
            user_id="alice",
            parent_id="u1",
            model="m",
            prompt_chars=10,
        )
        return [event async for event in events]

    produced = asyncio.run(run())
    assert [cast(Any, event).seq for event in produced] == list(range(len(produced)))
    assert isinstance(produced[-1], ReplyFailed if fails else ReplyFinished)


def test_last_seq_follows_every_numbered_event() -> None:
    seq = 0
    sent: list[Event] = [
        ReplyStarted(CHAT, MESSAGE, 0, "alice", None, "m", 0.0),
        TextDelta(CHAT, MESSAGE, 1, "a"),
        ReasoningDelta(CHAT, MESSAGE, 2, "r"),
        StatusChanged(CHAT, MESSAGE, 3, "s", True),
        SourcesFound(CHAT, MESSAGE, 4, []),
        UserTyping("s1", "bob"),  # not a reply's: no seq of its own
    ]
    for event in sent:
        seq = last_seq(seq, event)
    assert seq == 4
