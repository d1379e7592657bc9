"""A reply's life, as data: its phase, the text so far, the last `seq` it sent.

Theory of operation (h11's habit: states and transitions written as data)::

    OPENING ──first event──▶ STREAMING ──ReplyFinished──▶ FINISHED
       │                         │──────ReplyFailed──────▶ FAILED
       │                         └──stop / shutdown─────▶ CANCELLED
       ├──the upstream refused──────────────────────────▶ FAILED
       └──stop / shutdown───────────────────────────────▶ CANCELLED

Every phase but OPENING and STREAMING is an end; a reply reaches exactly one,
and its end event is numbered after every event it sent (`next_seq`).  The
events an end publishes are made here (`cancelled`, `crashed`, `refused`);
where the end is stored and published is `runner.py`'s one `_conclude`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.chat.reply import estimate_tokens, last_seq
from gateway.chat.running import Running
from gateway.edge.trace import Trace
from gateway.errors import GatewayError
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from gateway.store.records import MessageRecord


class Phase(enum.Enum):
    OPENING = "opening"
    STREAMING = "streaming"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDS = frozenset({Phase.FINISHED, Phase.FAILED, Phase.CANCELLED})
_OPENING = Phase.OPENING  # read on every event: a module global is cheaper than Enum lookup
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.OPENING: frozenset({Phase.STREAMING, Phase.FAILED, Phase.CANCELLED}),
    Phase.STREAMING: frozenset({Phase.FINISHED, Phase.FAILED, Phase.CANCELLED}),
}


class LifecycleError(RuntimeError):
    """A transition the table does not allow (a reply ended twice, say): a bug."""


@dataclass(slots=True)
class ReplyRun:
    """One reply in progress.  `record` is where it is stored (None: nothing is);
    `title` is what the chat is named if the reply succeeds and the chat has no
    title of its own by then."""

    running: Running
    record: MessageRecord | None = None
    title: str | None = None
    # What a finished reply sets off once it is stored and published (the
    # turn's background tasks: a generated title, tags, follow-ups).
    after: Callable[[ReplyFinished], None] | None = None
    phase: Phase = Phase.OPENING
    parts: list[str] = field(default_factory=list)
    seq: int = 0
    started: float = field(default_factory=time.monotonic)
    # Draft checkpoints (`drafts.py`): how many parts the last one held.
    drafted: int = 0
    # For the metrics: the model that answered, and when its first text came.
    model: str = ""
    first_token: float | None = None
    # Its live trace (`edge/trace.py`), for whoever debugs it.
    trace: Trace | None = None
    # The write of its turn (the question and this placeholder), when that runs
    # while the upstream opens; nothing of the reply is published or stored
    # before it is done (`runner.py`).  None: written before the reply started.
    written: asyncio.Future[None] | None = None

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def ended(self) -> bool:
        return self.phase in ENDS

    def advance(self, phase: Phase) -> None:
        if phase not in TRANSITIONS.get(self.phase, frozenset()):
            raise LifecycleError(f"a reply cannot go from {self.phase.value} to {phase.value}")
        self.phase = phase

    def saw(self, event: Event) -> None:
        """An event of the upstream's stream, about to be published (once per delta:
        kept cheap)."""
        if self.phase is _OPENING:
            self.advance(Phase.STREAMING)
        self.seq = last_seq(self.seq, event)
        if type(event) is TextDelta:
            self.parts.append(event.text)
            if self.first_token is None:
                self.first_token = time.monotonic()
        elif type(event) is ReasoningDelta or type(event) is ToolCallDelta:
            if self.first_token is None:
                self.first_token = time.monotonic()
        elif type(event) is ReplyStarted:
            self.model = event.model

    def end_phase(self, end: ReplyFinished | ReplyFailed) -> Phase:
        if isinstance(end, ReplyFailed):
            return Phase.FAILED
        return Phase.CANCELLED if end.cancelled else Phase.FINISHED

    # -- the ends this reply makes up itself ----------------------------------------
    def next_seq(self) -> int:
        """After every event sent; 0 when none was (the upstream never answered)."""
        return self.seq + 1 if self.phase is not Phase.OPENING else 0

    def refused(self, error: GatewayError) -> ReplyFailed:
        """The upstream would not open (unknown model, server down)."""
        return ReplyFailed(
            self.running.chat_id, self.running.message_id, 0, error.code, error.message
        )

    def cancelled(self) -> ReplyFinished:
        """Stopped (a user's stop, a removal, shutdown): what streamed so far, kept."""
        content = self.content
        return ReplyFinished(
            self.running.chat_id,
            self.running.message_id,
            self.next_seq(),
            content,
            Usage(0, estimate_tokens(len(content)), estimated=True),
            "cancelled",
            time.monotonic() - self.started,
            cancelled=True,
        )

    def crashed(self, message: str = "Internal error") -> ReplyFailed:
        """Our own failure mid-reply: the text so far goes with the error."""
        return ReplyFailed(
            self.running.chat_id,
            self.running.message_id,
            self.next_seq(),
            "internal_error",
            message,
            self.content,
        )
