"""Open WebUI: `/api/chat/completions` bodies and the Socket.IO `events` (docs/PROTOCOLS.md §1).

Three modes share the completions route; the body says which::

    no chat_id, no session_id       pure API: an OpenAI request, nothing stored
    chat_id + id (assistant msg)    backend-controlled: the reply is written into
                                    chat.history.messages[id]
    session_id + id (+ user_message, parent_id)
                                    frontend mode (the web app): the chat is created
                                    if needed, the reply streams over the socket

Unlike OpenAI, `messages` may be absent: the chat's tree is the conversation.

Socket.IO client → server, each decoded into a Command (`OpenWebUIFlavour`)::

    user-join    {"auth": {"token": "…"}}                → Authenticate(token)
    events:chat  {"chat_id", "data": {"type": "join"}}   → ChatSignal(chat_id, type)
    events:chat  {"chat_id", "data": {"type": "resume", "after": {<message id>: <seq>}}}
                                                         → Resume (the gateway's own)

Socket.IO server → client, event name `events`, to room `user:<owner>`::

    {"chat_id": "…", "message_id": "…", "data": {"type": "chat:message:delta",
                                                   "data": {"content": "Hel"}}}

One reply is::

    chat:active {active: true}
    chat:message:delta {content: <delta>}          per chunk (appends; O(n) on the
                                                   wire, unlike re-sending the whole
                                                   text per token, Open WebUI #23733)
    status {description, done, action?} · source <one source>   as they happen
    chat:tasks:cancel {}                           only when it was stopped
    chat:completion {done: true, content, title?, usage, cancelled?}  after it is stored
    chat:title "<title>"                           first turn only
    chat:active {active: false}

and on failure `chat:message:error {error: {content}}`, then
`chat:completion {done: true, content, error: {content}}`, `chat:active false`.

A socket that asked for seqs (`auth.seq` in its handshake) gets `"seq"` in every
envelope of a reply, next to `message_id`: what it names to resume.

A client that resumes a reply (`fanout/follow.py`) may first get its text at once,
`chat:message {content, snapshot: "exact"|"stored"}` (the web app replaces the
message's content with it), and for a finished reply whose events the buffer no
longer holds, `chat:completion {done: true, content, snapshot: "stored"}` and
`chat:active false`.

A reply whose reasoning came first (`chat/reasoning.py`) is shown as Open WebUI
0.12.4 shows it, as `output` items: its deltas carry their item's index and go as
`response:completion` events the web app applies to `message.output`::

    response:completion {type: "response.reasoning_text.delta", item_id, output_index,
                         content_index: 0, delta}          reasoning ("Thinking…")
    response:completion {type: "response.output_item.done", output_index, item}
                                                           its end: "Thought for N seconds"
    response:completion {type: "response.output_text.delta", item_id, output_index,
                         content_index: 0, delta}          the answer
    chat:completion {done: true, content, output: [...], usage, title?}

Reasoning without an item (it came after the answer began) is not sent: it is in
the finished reply's `output`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.commands import (
    Ask,
    Authenticate,
    ChatSignal,
    Command,
    ReplyTarget,
    Resume,
    resume_of,
)
from gateway.errors import BadRequest, ProtocolError
from gateway.events import (
    Event,
    MessageEvent,
    ReasoningDelta,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    SourcesFound,
    StatusChanged,
    TextDelta,
    output_item_id,
)
from gateway.flavours.openai import (
    PASSTHROUGH_PARAMS,
    decode_common,
    decode_messages,
    include_usage_of,
)

EVENTS = "events"
# The web app names unsaved chats "temporary:<socket id>" (before 0.10: "local:");
# they are not stored.
TEMPORARY_CHAT_PREFIXES = ("temporary:", "local:")

# A frame for python-socketio: (event name, payload).
Frame = tuple[str, dict[str, Any]]


# -- /api/chat/completions ------------------------------------------------------
def is_stored_request(body: Any) -> bool:
    """Backend-controlled or frontend mode: the reply lands in a chat."""
    if not isinstance(body, Mapping):
        return False
    answer_into = body.get("id") or body.get("message_ids")
    return bool(body.get("chat_id")) or bool(body.get("session_id") and answer_into)


def lost_socket(body: Any) -> bool:
    """A web-app turn (the message its reply goes into, no `messages` and no chat)
    without the `session_id` its reply streams to: the page's socket is not
    connected (socket.io-client's `socket.id` is undefined then, and the key is left
    out).  Answered as the pure API, it would be refused for its missing `messages`:
    say what is missing instead."""
    return (
        isinstance(body, Mapping)
        and not body.get("session_id")
        and not body.get("chat_id")
        and "messages" not in body
        and bool(body.get("id") or body.get("message_ids"))
    )


BACKGROUND_TASKS = ("title_generation", "tags_generation", "follow_up_generation")


def background_tasks(body: Any) -> frozenset[str]:
    """The tasks a turn's `background_tasks` turns on (the web app sends
    `{"title_generation": true, "tags_generation": false, ...}`)."""
    tasks = body.get("background_tasks") if isinstance(body, Mapping) else None
    if not isinstance(tasks, Mapping):
        return frozenset()
    return frozenset(name for name in BACKGROUND_TASKS if tasks.get(name) is True)


def is_temporary_chat(chat_id: str | None) -> bool:
    return bool(chat_id and chat_id.startswith(TEMPORARY_CHAT_PREFIXES))


def is_web_app_turn(ask: Ask) -> bool:
    """A turn only the web app sends: a new chat, a user message, or an unsaved chat.

    Frontend mode is also chosen for a body that names a live socket of the
    caller; these cover a tab whose socket is reconnecting (its reply still
    reaches it, through the user's room, once it is back).
    """
    return ask.chat_id is None or ask.user_message is not None or ask.temporary


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string")
    return value


def decode_completion_request(body: Any) -> Ask:
    body, model, stream = decode_common(body)
    if body.get("tools"):
        # Relayed on the pure API (`flavours/openai.py`); a stored chat has nowhere to
        # keep the calls, and answering as if none were offered would lose them.
        raise BadRequest(
            "Tool calling ('tools') is relayed only for a reply that is not stored: "
            "send the request without 'chat_id' and 'session_id', or without 'tools'"
        )
    raw_messages = body.get("messages")
    messages = decode_messages(raw_messages) if raw_messages else []
    chat_id = _optional_str(body, "chat_id")
    message_id = _optional_str(body, "id")
    session_id = _optional_str(body, "session_id")
    if chat_id and message_id is None:
        raise BadRequest("'id' (the assistant message to answer into) is required with 'chat_id'")
    user_message = body.get("user_message")
    if user_message is not None and (
        not isinstance(user_message, Mapping) or not isinstance(user_message.get("id"), str)
    ):
        raise BadRequest("'user_message' must be an object with a string 'id'")
    targets = _targets(body.get("message_ids"), model)
    if targets and message_id is None:
        message_id = targets[0].message_id
    return Ask(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage_of(body),
        params=_params(body),
        chat_id=chat_id,
        message_id=message_id,
        parent_id=_optional_str(body, "parent_id"),
        session_id=session_id,
        user_message=dict(user_message) if user_message is not None else None,
        targets=targets,
        temporary=is_temporary_chat(chat_id),
    )


def _params(body: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling options: the web app nests them under `params`; API clients put them
    at the top level (which wins)."""
    nested = body.get("params")
    params = {}
    if isinstance(nested, Mapping):
        params = {key: nested[key] for key in PASSTHROUGH_PARAMS if nested.get(key) is not None}
    params.update({key: body[key] for key in PASSTHROUGH_PARAMS if key in body})
    return params


def _targets(raw: Any, model: str) -> tuple[ReplyTarget, ...]:
    """`message_ids: [{"model_id", "message_id", "modelIdx"}]`: one reply per selected model."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest("'message_ids' must be an array")
    targets = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("message_id"), str):
            raise BadRequest(f"message_ids[{index}] must be an object with a string 'message_id'")
        entry_model = entry.get("model_id") or model
        if not isinstance(entry_model, str):
            raise BadRequest(f"message_ids[{index}].model_id must be a string")
        model_idx = entry.get("modelIdx")
        if not isinstance(model_idx, int) or isinstance(model_idx, bool):
            model_idx = None
        targets.append(ReplyTarget(entry["message_id"], entry_model, model_idx))
    return tuple(targets)


# -- Socket.IO client events ------------------------------------------------------
# What python-socketio hands over: (event name, data).
SocketEvent = tuple[str, Any]


class OpenWebUIFlavour:
    """The `Flavour` of the web app's socket (`flavours/base.py`).

    Its errors carry no frame: a refused event is answered with no ack.
    The completions route's body is HTTP: `decode_completion_request`.
    """

    def decode(self, frame: SocketEvent) -> Command:
        name, data = frame
        if name == "user-join":
            return decode_join(data)
        if name == "events:chat":
            inner = data.get("data") if isinstance(data, Mapping) else None
            if isinstance(inner, Mapping) and inner.get("type") == "resume":
                return decode_resume(data)
            return decode_chat_signal(data)
        raise ProtocolError(f"Unknown event {name!r}; expected user-join or events:chat")

    def encoder(self, request: Command | None = None) -> SocketEncoder:
        return SocketEncoder()


def decode_join(data: Any) -> Authenticate:
    """`user-join` `{"auth": {"token": "…"}}`."""
    auth = data.get("auth") if isinstance(data, Mapping) else None
    token = auth.get("token") if isinstance(auth, Mapping) else None
    if not isinstance(token, str) or not token:
        raise ProtocolError("user-join needs {auth: {token}}")
    return Authenticate(token)


def decode_chat_signal(data: Any) -> ChatSignal:
    """`events:chat` `{"chat_id", "data": {"type": "join"|"leave"|"last_read_at"|"typing"}}`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("chat_id"), str):
        raise ProtocolError("events:chat needs {chat_id, data: {type}}")
    inner = data.get("data")
    kind = inner.get("type") if isinstance(inner, Mapping) else None
    if not isinstance(kind, str):
        raise ProtocolError("events:chat needs {chat_id, data: {type}}")
    return ChatSignal(data["chat_id"], kind)


def decode_resume(data: Any) -> Resume:
    """`events:chat` `{"chat_id", "data": {"type": "resume", "after": {<message id>: <seq>}}}`:
    each reply's events after that seq (-1: all of them), then the live rest."""
    inner = data.get("data") if isinstance(data, Mapping) else None
    after = inner.get("after") if isinstance(inner, Mapping) else None
    chat_id = data.get("chat_id") if isinstance(data, Mapping) else None
    resume = resume_of(after, chat_id)
    if resume is None:
        raise ProtocolError(
            "A resume needs {chat_id, data: {type: resume, after: {<message id>: <seq ≥ -1>}}}"
        )
    return resume


# -- Socket.IO server events -------------------------------------------------------
class SocketEncoder:
    """Turns canonical events into `events` frames; one per connection, stateless per reply.

    Reasoning deltas are sent only with the index of their `output` item (the
    reasoning came first), as the deltas of the text that follows it.

    With `seq` (a socket that asked for it in its handshake, `auth.seq`), every
    envelope of a reply also carries the event's `seq` next to `message_id`: what
    a resume names.  Counting envelopes cannot stand in for it: a catch-up
    snapshot stands for every event before it, and a socket that fell behind
    gets deltas merged.
    """

    def __init__(self, seq: bool = False) -> None:
        self._seq = seq

    def encode(self, event: Event) -> list[Frame]:
        frames = self._encode(event)
        if self._seq and isinstance(event, ReplyEvent):
            for _, payload in frames:
                payload["seq"] = event.seq
        return frames

    def _encode(self, event: Event) -> list[Frame]:
        if isinstance(event, TextDelta):
            if event.item is not None:
                return [_item_delta(event, "text", "response.output_text.delta", event.item)]
            delta = {"content": event.text}
            return [_frame(event.chat_id, event.message_id, "chat:message:delta", delta)]
        if isinstance(event, ReasoningDelta):
            if event.item is None:
                return []
            return [_item_delta(event, "reasoning", "response.reasoning_text.delta", event.item)]
        if isinstance(event, ReplyStarted):
            return [_frame(event.chat_id, event.message_id, "chat:active", {"active": True})]
        if isinstance(event, ReplyFinished):
            return _finished(event)
        if isinstance(event, ReplyFailed):
            error = {"content": event.message}
            return [
                _frame(event.chat_id, event.message_id, "chat:message:error", {"error": error}),
                _frame(
                    event.chat_id,
                    event.message_id,
                    "chat:completion",
                    {"done": True, "content": event.partial_content, "error": error},
                ),
                _frame(event.chat_id, event.message_id, "chat:active", {"active": False}),
            ]
        if isinstance(event, StatusChanged):
            status: dict[str, Any] = {"description": event.description, "done": event.done}
            if event.action is not None:
                status["action"] = event.action
            return [_frame(event.chat_id, event.message_id, "status", status)]
        if isinstance(event, SourcesFound):
            return [
                _frame(event.chat_id, event.message_id, "source", source)
                for source in event.sources
            ]
        if isinstance(event, MessageEvent):
            return [_frame(event.chat_id, event.message_id, event.type, event.data)]
        if isinstance(event, ReplySnapshot):
            return _snapshot(event)
        # Presence and workspace events are Nadoo's.
        return []


def _finished(event: ReplyFinished) -> list[Frame]:
    # `title` is the one source of chat:title (there is no separate title event),
    # so it is sent once, after chat:completion and before chat:active false.
    completion: dict[str, Any] = {
        "done": True,
        "content": event.content,
        "usage": event.usage.as_dict(),
    }
    if event.title is not None:
        completion["title"] = event.title
    if event.output is not None:
        completion["output"] = event.output
    frames = []
    if event.cancelled:
        completion["cancelled"] = True
        # The web app marks the turn's replies done and forgets its task ids.
        frames.append(_frame(event.chat_id, event.message_id, "chat:tasks:cancel", {}))
    frames.append(_frame(event.chat_id, event.message_id, "chat:completion", completion))
    if event.title is not None:
        frames.append(_frame(event.chat_id, event.message_id, "chat:title", event.title))
    frames.append(_frame(event.chat_id, event.message_id, "chat:active", {"active": False}))
    return frames


def _snapshot(event: ReplySnapshot) -> list[Frame]:
    """A resumed reply's text at once: `chat:message` replaces the message's content
    in the web app; `snapshot` says whether it is exact (the deltas after it follow)
    or the stored state; a finished reply's snapshot ends it."""
    marker = "exact" if event.exact else "stored"
    replaced = {"content": event.content, "snapshot": marker}
    frames = [_frame(event.chat_id, event.message_id, "chat:message", replaced)]
    if event.done:
        completion = {"done": True, "content": event.content, "snapshot": marker}
        frames.append(_frame(event.chat_id, event.message_id, "chat:completion", completion))
        frames.append(_frame(event.chat_id, event.message_id, "chat:active", {"active": False}))
    return frames


def _item_delta(event: TextDelta | ReasoningDelta, kind: str, type_: str, item: int) -> Frame:
    """A delta of one `output` item, as Open WebUI 0.12.4's `response:completion`."""
    delta = {
        "type": type_,
        "item_id": output_item_id(kind, event.message_id, item),
        "output_index": item,
        "content_index": 0,
        "delta": event.text,
    }
    return _frame(event.chat_id, event.message_id, "response:completion", delta)


def _frame(chat_id: str | None, message_id: str, kind: str, data: Any) -> Frame:
    payload = {"chat_id": chat_id, "message_id": message_id, "data": {"type": kind, "data": data}}
    return (EVENTS, payload)
