"""Canonical events: the one language between the chat core and every wire.

A reply is a sequence of events sharing `chat_id` and `message_id`, numbered
by `seq` from 0 so a client that reconnects can ask for what follows the last
one it saw.  `TextDelta.text` is always incremental; a flavour that must send
cumulative text keeps the running text in its own encoder.

Pure API completions (nothing stored) have `chat_id = None`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonwire


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    chat_id: str | None
    message_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class ReplyStarted(ReplyEvent):
    user_id: str
    parent_id: str | None
    model: str
    started_at: float


@dataclass(frozen=True, slots=True)
class TextDelta(ReplyEvent):
    text: str
    # A reply whose reasoning came first is shown as Open WebUI's `output` items
    # (`chat/reasoning.py`): the index of the item this text goes to; None for
    # plain text (Open WebUI's `chat:message:delta`).
    item: int | None = None


@dataclass(frozen=True, slots=True)
class ReasoningDelta(ReplyEvent):
    text: str
    # The index of the reasoning's `output` item, as for TextDelta; None for
    # reasoning that came after the answer began (shown with the finished reply).
    item: int | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta(ReplyEvent):
    """A piece of a call the model makes to a tool its request offered (a pure API
    reply's only: a stored chat offers none).  `index` names the call within the
    reply; its first piece carries `call_id` and `name`, the pieces after it more of
    `arguments`, a JSON text cut anywhere (`flavours/openai.py` joins them).  `extra`:
    what else the server put on the call, relayed as it came (Gemini's
    `extra_content`, its thought signature, which must come back with the call)."""

    index: int
    arguments: str = ""
    call_id: str | None = None
    name: str | None = None
    extra: dict[str, Any] | None = None


def output_item_id(kind: str, message_id: str, index: int) -> str:
    """The id of a reply's `output` item ("text" or "reasoning"), the same while it
    streams and once stored (Open WebUI's ids are "msg_…" and "r_…")."""
    return f"{'r' if kind == 'reasoning' else 'msg'}_{message_id}_{index}"


@dataclass(frozen=True, slots=True)
class StatusChanged(ReplyEvent):
    description: str
    done: bool
    action: str | None = None


@dataclass(frozen=True, slots=True)
class SourcesFound(ReplyEvent):
    sources: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # True when the upstream reported no usage and we counted roughly.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    def as_wire(self) -> dict[str, Any]:
        """Between replicas: everything, `estimated` included."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated": self.estimated,
        }

    @classmethod
    def of_wire(cls, shaped: dict[str, Any]) -> Usage:
        return cls(
            int(shaped["prompt_tokens"]),
            int(shaped["completion_tokens"]),
            bool(shaped.get("estimated", False)),
        )


@dataclass(frozen=True, slots=True)
class ReplyFinished(ReplyEvent):
    content: str
    usage: Usage
    finish_reason: str
    elapsed_s: float
    cancelled: bool = False
    # The chat's first title, when this reply gave it one: the only carrier of a
    # title change (Open WebUI's `chat:title` goes out before `chat:active false`).
    title: str | None = None
    # A reply with reasoning: its Open WebUI `output` items (`chat/reasoning.py`),
    # stored with it; None for a reply that is its text alone.
    output: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class ReplyFailed(ReplyEvent):
    code: str
    message: str
    partial_content: str = ""


@dataclass(frozen=True, slots=True)
class ReplySnapshot(ReplyEvent):
    """A reply's text at once, for a client that resumed (`fanout/follow.py`): it
    replaces what the client holds.  `exact`: the text of every event up to `seq`
    (rebuilt from the replay buffer; the events after it follow); otherwise the
    stored state (the checkpointed draft, or the final text when `done`), sent
    because the buffer no longer held what the client asked for."""

    content: str
    done: bool
    exact: bool


@dataclass(frozen=True, slots=True)
class MessageEvent(ReplyEvent):
    """A client-defined event about a message (Open WebUI `/messages/{id}/event`)."""

    type: str
    data: Any = None


# Presence and workspace events (Nadoo) are not part of a reply; they carry
# their own room identity.  `origin` is the id of the connection they came
# from, so it is not told about itself.
@dataclass(frozen=True, slots=True)
class UserTyping:
    session_id: str
    user_id: str
    origin: str = ""


@dataclass(frozen=True, slots=True)
class UserJoined:
    room: str
    user_id: str
    origin: str = ""


@dataclass(frozen=True, slots=True)
class UserLeft:
    room: str
    user_id: str
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Notification:
    user_id: str
    title: str
    body: str
    action_url: str | None = None


@dataclass(frozen=True, slots=True)
class WorkspaceEvent:
    workspace_id: str
    user_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    # Its data as JSON text, written once for every member that gets it (the
    # flavour's frames splice it in: `flavours/nadoo.py`), and its size in
    # characters, counted against an outbox's bound as a reply's text is: a reader
    # that stops reading holds no more of a workspace's 1 MB events than of a
    # reply.  Neither is sent between replicas: each one makes them.
    data_json: str = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        written = jsonwire.dumps(self.data)
        object.__setattr__(self, "data_json", written)
        object.__setattr__(self, "size", len(written))


# The events of one reply (each a `ReplyEvent`: chat_id, message_id, seq).
AnyReplyEvent = (
    ReplyStarted
    | TextDelta
    | ReasoningDelta
    | ToolCallDelta
    | StatusChanged
    | SourcesFound
    | ReplyFinished
    | ReplyFailed
    | ReplySnapshot
    | MessageEvent
)

Event = (
    AnyReplyEvent
    | UserTyping
    | UserJoined
    | UserLeft
    | Notification
    | WorkspaceEvent
)

# Every event class by name, derived from the union (the bus and the golden
# vectors name events this way): a class added to `Event` is known everywhere.
EVENT_TYPES: dict[str, type[Event]] = {cls.__name__: cls for cls in typing.get_args(Event)}
