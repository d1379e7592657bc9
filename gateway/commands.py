"""Commands: what a decoded client frame asks the chat core to do.

Flavours turn wire frames into these; the chat service runs them.  They carry
no identity: the transport pairs each with the connection's `Principal`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# How RAGFlow sends an answer: the text so far in each chunk, or each delta.
AnswerMode = Literal["cumulative", "delta"]
# The longest id a client may name for what its commands carry: a reply's chat and
# message (`chat/turns.py` `check_ids`), a Nadoo session or workspace in a socket's
# path.  Open WebUI's are UUIDs, 36 characters.  Every event of a reply carries
# its ids, and a session's room name travels with each on the bus: a probe's 1 MB
# message id made one reply of 56 tokens cost 48 s of the loop over 16 streams.
MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """One assistant message to answer into, with the model that answers it."""

    message_id: str
    model: str
    # Open WebUI's position of the model in a multi-model turn (`modelIdx`).
    model_idx: int | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask a model for a reply.

    `messages` are OpenAI chat messages (`{"role", "content", ...}`); when a
    chat is named, the core may instead build them from the chat's tree.
    `params` are the sampling options passed through to the upstream
    (temperature, max_tokens, stop, ...), already validated as JSON values.
    """

    model: str
    messages: list[dict[str, Any]]
    stream: bool = True
    include_usage: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    chat_id: str | None = None
    message_id: str | None = None
    parent_id: str | None = None
    session_id: str | None = None
    user_message: dict[str, Any] | None = None
    # Every reply of a turn (several models answer one question); empty means
    # one reply, `message_id` by `model`.
    targets: tuple[ReplyTarget, ...] = ()
    # An unsaved chat: `chat_id` names it on the wire, nothing is stored.
    temporary: bool = False
    # Rooms the reply's events also go to, besides the owner's and the chat's:
    # the asking connection's own (`conn:<id>`) or a Nadoo session's.
    rooms: tuple[str, ...] = ()

    def reply_targets(self) -> tuple[ReplyTarget, ...]:
        if self.targets:
            return self.targets
        if self.message_id is None:
            raise RuntimeError("Ask.reply_targets() needs message_id or targets")
        return (ReplyTarget(self.message_id, self.model),)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop a running reply: by message id, or every reply of a chat."""

    chat_id: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Say:
    """A user message to a chat (a new chat when `chat_id` is None), to be answered.

    `model` is what the client named (a model id, or an application/assistant
    the endpoint resolves); None means the gateway's default model.
    """

    text: str
    chat_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Question:
    """A user message to an assistant (RAGFlow), in one of its sessions or a new one.

    `Say` with RAGFlow's own fields: the assistant (not a model: it brings a
    system prompt and sampling settings), whether the answer is streamed, and
    how (`answer_mode`; None: the endpoint's default).
    """

    assistant_id: str
    question: str
    session_id: str | None = None
    stream: bool = True
    answer_mode: AnswerMode | None = None


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Who the connection is, said after it opened (Open WebUI's `user-join`)."""

    token: str


@dataclass(frozen=True, slots=True)
class ChatSignal:
    """What a client's view of a chat did: `type` is join, leave, last_read_at or
    typing (Open WebUI's `events:chat`); the socket acknowledges join and leave."""

    chat_id: str
    type: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Send what followed: for each reply in `after`, its events after that `seq`
    (-1: from its start), then the live rest (`fanout/follow.py`).  `chat_id` lets a
    resume that comes after the replay buffer expired still get the stored text."""

    after: tuple[tuple[str, int], ...]
    chat_id: str | None = None
    # RAGFlow: how the resumed answers are sent (None: the connection's default).
    answer_mode: AnswerMode | None = None


MAX_RESUMED = 32  # replies one resume frame may name


def resume_of(after: Any, chat_id: Any, message_id: Any = None) -> Resume | None:
    """A `Resume` from a frame's fields: `after` a {message_id: seq} mapping, or a seq
    with `message_id`; None when they are not that (the flavour says how)."""
    pairs: list[tuple[str, int]] = []
    if message_id is not None:
        if not isinstance(message_id, str) or not message_id:
            return None
        after = {message_id: -1 if after is None else after}
    if not isinstance(after, dict) or not after or len(after) > MAX_RESUMED:
        return None
    for key, seq in after.items():
        if not isinstance(key, str) or not key or type(seq) is not int or seq < -1:
            return None
        pairs.append((key, seq))
    if chat_id is not None and (not isinstance(chat_id, str) or not chat_id):
        return None
    return Resume(tuple(pairs), chat_id)


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Typing:
    pass


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A client event relayed to the other members of a room (Nadoo workspaces)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


Command = (
    Ask | Cancel | Say | Question | Authenticate | ChatSignal | Resume | Ping | Typing | Broadcast
)

# Every command class by name, derived from the union (the golden vectors name them so).
COMMAND_TYPES: dict[str, type[Command]] = {cls.__name__: cls for cls in typing.get_args(Command)}
