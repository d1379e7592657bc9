"""Open WebUI's `events` as Server-Sent Events, for clients that have only SSE
(docs/PROTOCOLS.md §5).  Pure: no I/O.

Each frame a Socket.IO client would get as `events` is one SSE event whose
`data` is the same envelope, `{"chat_id", "message_id", "data": {"type", "data"}}`.
When one canonical event makes several frames (a reply's end: `chat:completion`,
`chat:title`, `chat:active`), only the last carries the `id:`, so a client cut
between them is sent the whole event again.

One reply (`GET /api/v1/chats/{chat_id}/messages/{message_id}/stream`): the id
is the event's `seq`; `Last-Event-ID: <seq>` resumes after it.

Every event of the user (`GET /api/v1/events`): the id is a *cursor*, what a
resume needs to know of the whole stream::

    <ms>[.<seq>-<message id>]...      all numbers in base 36

`ms` is the start (wall clock, ms) of the newest reply whose start the stream
has sent, or when the stream was first opened if later; then, for each reply
the stream has seen running, the last `seq` sent (message ids
percent-encoded).  Resuming from it (`Replies.attach` for each):

    a reply in the cursor                      its events after that seq
    a reply not in it, running or started      all of it (it began unseen)
      after ms
    any other                                  nothing (seen whole, or over before)

Times are what the event says, not when the stream wrote it, so a stream that
fell behind names what its client really got.  (Two replies of one user
started within the same moment on two replicas, a cut between their starts:
the later one's start may hide the earlier — replicas' clocks are assumed in
step, as NTP keeps them.)

At most MAX_CURSOR_REPLIES replies are named (the oldest go first): a user
with more running at once than that may be sent one again from its start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from gateway import jsonwire
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    SourcesFound,
    StatusChanged,
    TextDelta,
)
from gateway.flavours.openwebui import SocketEncoder
from gateway.flavours.sse import event_frame
from gateway.text import storable

MAX_CURSOR_REPLIES = 16
MAX_CURSOR_CHARS = 4096
# A cursor's numbers (a time in ms, seqs) are below 2**53, as JavaScript's are:
# 11 base-36 digits.  A longer one is no cursor this stream wrote, and writing
# a 4,000-digit number back in base 36 at every event held the loop 7 ms each.
MAX_NUMBER = 2**53
_MAX_DIGITS = 11
_RUNNING = (ReplyStarted, TextDelta, ReasoningDelta, StatusChanged, SourcesFound, ReplySnapshot)
_ENCODER = SocketEncoder()


def _b36(number: int) -> str:
    if number < 0:
        return "-" + _b36(-number)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def _id_part(message_id: str) -> str:
    # Percent-encoded, "." too (it separates the parts).
    return quote(message_id, safe="").replace(".", "%2E")


def frames(event: Event, event_id: str | None) -> bytes:
    """The event's `events` envelopes as SSE events, the id on the last."""
    envelopes = _ENCODER.encode(event)
    out = []
    for index, (_name, payload) in enumerate(envelopes):
        last = index == len(envelopes) - 1
        out.append(event_frame(jsonwire.dumps(payload), event_id if last else None))
    return b"".join(out)


def reply_frames(event: Event) -> list[bytes]:
    """One reply's stream: the id is the event's seq (none for a snapshot before any)."""
    seq = getattr(event, "seq", -1)
    return [frames(event, str(seq) if seq >= 0 else None)]


def after_of(last_event_id: str | None) -> int | None:
    """A reply stream's `Last-Event-ID` as a seq; None when there is none or it is not one."""
    text = (last_event_id or "").strip()
    # ASCII digits only ("²" and "１" are digits to Python), and few enough to be a seq.
    if not text or len(text) > 16 or not text.isascii() or not text.isdigit():
        return None
    seq = int(text)
    return seq if seq < 2**53 else None


@dataclass(slots=True)
class Cursor:
    """Where a stream of every event of the user stands."""

    ms: int = 0
    seqs: dict[str, int] = field(default_factory=dict)

    def saw(self, event: Event) -> None:
        """After the event is sent: the newest start, the replies running, their seqs."""
        if isinstance(event, ReplyStarted):
            self.ms = max(self.ms, int(event.started_at * 1000))
        if isinstance(event, ReplyFinished | ReplyFailed) or (
            isinstance(event, ReplySnapshot) and event.done
        ):
            self.seqs.pop(event.message_id, None)
        elif isinstance(event, _RUNNING):
            self.seqs.pop(event.message_id, None)  # newest last
            if event.seq < 0:
                return  # a stored snapshot before any event: resumed from the start
            self.seqs[event.message_id] = event.seq
            while len(self.seqs) > MAX_CURSOR_REPLIES:
                del self.seqs[next(iter(self.seqs))]

    def id(self) -> str:
        parts = [_b36(self.ms)]
        parts += [f"{_b36(seq)}-{_id_part(mid)}" for mid, seq in self.seqs.items()]
        return ".".join(parts)

    def wants(self, message_id: str, started_ms: int, running: bool) -> int | None:
        """From which seq a kept reply is sent on resuming (-1: all), or None."""
        if message_id in self.seqs:
            return self.seqs[message_id]
        if running or started_ms > self.ms:
            return -1
        return None


def cursor_of(last_event_id: str | None) -> Cursor | None:
    """A cursor from `Last-Event-ID`; None for none or one that is not a cursor."""
    if not last_event_id or len(last_event_id) > MAX_CURSOR_CHARS:
        return None
    head, *rest = last_event_id.strip().split(".")
    try:
        cursor = Cursor(_number(head))
        for part in rest[:MAX_CURSOR_REPLIES]:
            seq, _, mid = part.partition("-")
            message_id = unquote(mid)
            # An id this cursor could not write back (a header's undecodable bytes).
            if not mid or storable(message_id) != message_id:
                return None
            cursor.seqs[message_id] = _number(seq)
    except ValueError:
        return None
    if cursor.ms < 0 or any(seq < -1 for seq in cursor.seqs.values()):
        return None
    return cursor


def _number(text: str) -> int:
    """One of a cursor's base-36 numbers, below MAX_NUMBER, or ValueError."""
    digits = text.removeprefix("-")
    if not 0 < len(digits) <= _MAX_DIGITS or not digits.isascii() or not digits.isalnum():
        raise ValueError(text)
    number = int(text, 36)
    if abs(number) >= MAX_NUMBER:
        raise ValueError(text)
    return number


def comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"


def all_frames(events: Iterable[Event], cursor: Cursor) -> bytes:
    """Events of the user's stream, each with the cursor after it as its id."""
    out = []
    for event in events:
        cursor.saw(event)
        out.append(frames(event, cursor.id()))
    return b"".join(out)
