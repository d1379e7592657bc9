"""Nadoo: the frames of `/ws/chat`, `/ws/notifications`, `/ws/workspaces` (docs/PROTOCOLS.md §4).

Client → server on `/ws/chat/{session_id}`::

    {"type": "chat", "content": "…", "application_id"?: "…", "chat_id"?: "…"}
        (Nadoo's other pages send type "message", or the text as "message")
    {"type": "typing"}   {"type": "ping"}   {"type": "cancel"}
    {"type": "resume", "message_id", "after": <seq>, "chat_id"?}   the gateway's own

Server → client, one reply::

    {"type": "response_start", "message_id", "chat_id", "timestamp"}
    {"type": "text-delta", "text": "<delta>", "index": 0, "timestamp"}      index from 0, per reply
    {"type": "sources", "sources": [...], "timestamp"}                       when there are any
    {"type": "response_end", "full_response", "tokens_used", "response_time",
     "chat_id", "message_id", "timestamp", "cancelled"?: true}

A client that connects with `?seq=1` gets each reply frame with the event's
`seq` too; one that resumes (`{"type": "resume", "message_id", "after": <seq>,
"chat_id"?}`) gets the frames it missed, `index` going on from where it was; when the replay
buffer no longer holds them, first `{"type": "snapshot", "message_id", "chat_id",
"content", "done", "exact": false}` (the stored text, to replace what it holds).

and `connected`, `pong`, `typing {user_id}`, `user_disconnected {user_id}`,
`error {message, code, data: {message, code}}` (both forms: Nadoo's pages
read `message` at the top and in `data`).  Workspaces: `user_joined`,
`user_left {user_id}`, and a member's `document_updated` /
`application_changed` / `member_added` frame relayed with its `user_id`.
Every frame has a `timestamp`, ISO 8601 in UTC with whole seconds and `Z`,
as Nadoo's documentation shows them.

Pure: `now` is passed in (`time.time` by default) so vectors are exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from gateway import jsonwire
from gateway.commands import Broadcast, Cancel, Command, Ping, Say, Typing, resume_of
from gateway.errors import GatewayError, ProtocolError
from gateway.events import (
    Event,
    Notification,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    SourcesFound,
    TextDelta,
    UserJoined,
    UserLeft,
    UserTyping,
    WorkspaceEvent,
)
from gateway.text import client_json

Clock = Callable[[], float]
# Nadoo's three sockets: /ws/chat/{session_id}, /ws/workspaces/{id}, /ws/notifications/{user}.
Socket = Literal["chat", "workspace", "notifications"]

# What a workspace member may broadcast to the others (Nadoo's list).
WORKSPACE_EVENTS = frozenset({"document_updated", "application_changed", "member_added"})


def timestamp(now: float) -> str:
    """`now` as ISO 8601 UTC to the second, as Nadoo writes it; the last second's text
    is reused (every delta of a second carries it: one `strftime` a second, not one
    a frame)."""
    global _stamped
    second = math.floor(now)
    stamped = _stamped
    if stamped[0] != second:
        stamped = _stamped = (second, time.strftime(_STAMP, time.gmtime(second)))
    return stamped[1]


_STAMP = "%Y-%m-%dT%H:%M:%SZ"
_stamped: tuple[int, str] = (0, time.strftime(_STAMP, time.gmtime(0)))


def frame(kind: str, now: float, fields: Mapping[str, Any] | None = None) -> str:
    """`{"type", ...fields, "timestamp"}`; fields cannot override type or timestamp."""
    shaped: dict[str, Any] = {"type": kind}
    shaped.update(fields or {})
    shaped["type"] = kind
    shaped.pop("timestamp", None)  # ours, and last, whatever a member's frame said
    shaped["timestamp"] = timestamp(now)
    return jsonwire.dumps(shaped)


def member_frame(event: WorkspaceEvent, now: float) -> str:
    """A workspace member's frame as sent, with who sent it: `frame`'s text, its data
    spliced in as the event wrote it once (`WorkspaceEvent.data_json`), not written
    again for each member that gets it (a 1 MB frame to 20 members was 20 writes)."""
    data = event.data
    if "type" in data or "timestamp" in data or "user_id" in data:
        return frame(event.type, now, {**data, "user_id": event.user_id})
    inner = event.data_json[1:-1]
    return "".join(
        (
            '{"type":',
            jsonwire.string(event.type),
            "," + inner if inner else "",
            ',"user_id":',
            jsonwire.string(event.user_id),
            ',"timestamp":',
            jsonwire.string(timestamp(now)),
            "}",
        )
    )


# -- client frames ----------------------------------------------------------------
def _parse(text: str, now: float) -> dict[str, Any]:
    try:
        # Every string storable (and sendable: a lone surrogate relayed to a
        # workspace's members would fail their sockets' writes).
        data = client_json(text)
    except ValueError:
        raise ProtocolError(
            "Frame is not JSON", error_frame("Frame is not JSON", "invalid_json", now)
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        message = 'Frame must be a JSON object with a string "type"'
        raise ProtocolError(message, error_frame(message, "invalid_frame", now))
    return data


def _id(data: dict[str, Any], key: str, now: float) -> str | None:
    """An optional id of a chat frame: absent, null or "" say none; any other
    non-string is refused (read as none, a message meant for a chat would start
    another)."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        message = f'"{key}" must be a string'
        raise ProtocolError(message, error_frame(message, "invalid_frame", now))
    return value


def decode_chat(text: str, now: float) -> Command:
    """A frame of `/ws/chat/{session_id}`; raises ProtocolError carrying the error frame."""
    data = _parse(text, now)
    kind = data["type"]
    if kind in ("chat", "message"):
        content = data.get("content")
        if content is None:
            content = data.get("message")
        if not isinstance(content, str) or not content.strip():
            message = 'A chat frame needs "content", a non-empty string'
            raise ProtocolError(message, error_frame(message, "missing_content", now))
        return Say(content, _id(data, "chat_id", now), _id(data, "application_id", now))
    if kind == "ping":
        return Ping()
    if kind == "typing":
        return Typing()
    if kind == "cancel":
        return Cancel()
    if kind == "resume":
        resume = resume_of(data.get("after"), data.get("chat_id"), data.get("message_id"))
        if resume is None:
            message = 'A resume frame needs "message_id" and "after" (a seq, -1 or more)'
            raise ProtocolError(message, error_frame(message, "bad_resume", now))
        return resume
    message = f"Unknown frame type {kind!r}; expected chat, typing, ping or cancel"
    raise ProtocolError(message, error_frame(message, "unknown_type", now))


def decode_workspace(text: str, now: float) -> Command:
    data = _parse(text, now)
    kind = data["type"]
    if kind == "ping":
        return Ping()
    if kind not in WORKSPACE_EVENTS:
        allowed = ", ".join(sorted(WORKSPACE_EVENTS))
        message = f"Unknown frame type {kind!r}; a workspace relays {allowed} (and ping)"
        raise ProtocolError(message, error_frame(message, "unknown_type", now))
    return Broadcast(kind, {k: v for k, v in data.items() if k not in ("type", "timestamp")})


def decode_notifications(text: str, now: float) -> Command:
    data = _parse(text, now)
    if data["type"] != "ping":
        message = "The notifications socket only accepts ping"
        raise ProtocolError(message, error_frame(message, "unknown_type", now))
    return Ping()


# -- the codec ----------------------------------------------------------------------
class NadooFlavour:
    """The `Flavour` of one Nadoo socket (`flavours/base.py`): text frames both ways.

    One per connection: `self_id` is the connection's id, so its encoder does
    not tell it about its own presence; `clock` stamps every frame.
    """

    def __init__(self, socket: Socket, self_id: str = "", clock: Clock = time.time) -> None:
        self.socket: Socket = socket
        self.self_id = self_id
        self._clock = clock

    def decode(self, frame: str) -> Command:
        """A text frame of this socket; raises ProtocolError carrying the error frame."""
        now = self._clock()
        if self.socket == "chat":
            return decode_chat(frame, now)
        if self.socket == "workspace":
            return decode_workspace(frame, now)
        return decode_notifications(frame, now)

    def encoder(self, request: Command | None = None) -> Encoder:
        return Encoder(self.self_id, self._clock)


# -- server frames ----------------------------------------------------------------
def connected(session_id: str, user_id: str, now: float) -> str:
    return frame("connected", now, {"session_id": session_id, "user_id": user_id})


def pong(now: float) -> str:
    return frame("pong", now)


def error_frame(message: str, code: str, now: float) -> str:
    details = {"message": message, "code": code}
    return frame("error", now, {**details, "data": details})


def error_for(error: GatewayError, now: float) -> str:
    """The frame for an error: a protocol error carries its own, others are made here."""
    if isinstance(error, ProtocolError) and isinstance(error.frame, str):
        return error.frame
    return error_frame(error.message, error.code, now)


class Encoder:
    """Events → frames for one connection (`self_id`: its id, to skip its own presence).

    The `index` of text-delta counts from 0 within each reply.  With `seq` (a
    client that asked for `?seq=1`), each frame of a reply also carries the
    event's `seq`, what a `resume` frame names.
    """

    def __init__(self, self_id: str = "", clock: Clock = time.time, seq: bool = False) -> None:
        self._self_id = self_id
        self._clock = clock
        self._seq = seq
        self._index: dict[tuple[str | None, str], int] = {}

    def _reply(self, kind: str, now: float, fields: dict[str, Any], event: ReplyEvent) -> str:
        if self._seq:
            fields["seq"] = event.seq
        return frame(kind, now, fields)

    def encode(self, event: Event) -> list[str]:
        now = self._clock()
        if isinstance(event, TextDelta):
            key = (event.chat_id, event.message_id)
            index = self._index.get(key, 0)
            self._index[key] = index + 1
            # `self._reply("text-delta", now, {"text", "index"}, event)`, byte for byte
            # (`tests/flavours/test_spliced_frames.py`), spliced: no dict and no
            # `json.dumps` of one for each delta of every reply.
            seq = f',"seq":{event.seq}' if self._seq else ""
            return [
                f'{{"type":"text-delta","text":{jsonwire.string(event.text)},'
                f'"index":{index}{seq},"timestamp":"{timestamp(now)}"}}'
            ]
        if isinstance(event, ReplyStarted):
            self._index[(event.chat_id, event.message_id)] = 0
            ids = {"message_id": event.message_id, "chat_id": event.chat_id}
            return [self._reply("response_start", now, ids, event)]
        if isinstance(event, ReplyFinished):
            self._index.pop((event.chat_id, event.message_id), None)
            end: dict[str, Any] = {
                "full_response": event.content,
                "tokens_used": event.usage.completion_tokens,
                "response_time": round(event.elapsed_s, 3),
                "chat_id": event.chat_id,
                "message_id": event.message_id,
            }
            if event.cancelled:
                end["cancelled"] = True
            return [self._reply("response_end", now, end, event)]
        if isinstance(event, ReplyFailed):
            self._index.pop((event.chat_id, event.message_id), None)
            details = {"message": event.message, "code": event.code}
            failed = {
                **details,
                "data": details,
                "chat_id": event.chat_id,
                "message_id": event.message_id,
                "partial_response": event.partial_content,
            }
            return [self._reply("error", now, failed, event)]
        if isinstance(event, SourcesFound):
            if not event.sources:
                return []
            return [self._reply("sources", now, {"sources": event.sources}, event)]
        if isinstance(event, ReplySnapshot):
            snapshot = {
                "message_id": event.message_id,
                "chat_id": event.chat_id,
                "content": event.content,
                "done": event.done,
                "exact": event.exact,
            }
            return [self._reply("snapshot", now, snapshot, event)]
        return self._presence(event, now)

    def _presence(self, event: Event, now: float) -> list[str]:
        if (
            isinstance(event, UserTyping | UserJoined | UserLeft | WorkspaceEvent)
            and event.origin
            and event.origin == self._self_id
        ):
            return []
        if isinstance(event, UserTyping):
            return [frame("typing", now, {"user_id": event.user_id})]
        if isinstance(event, UserLeft):
            kind = "user_left" if event.room.startswith("workspace:") else "user_disconnected"
            return [frame(kind, now, {"user_id": event.user_id})]
        if isinstance(event, UserJoined):
            return [frame("user_joined", now, {"user_id": event.user_id})]
        if isinstance(event, WorkspaceEvent):
            return [member_frame(event, now)]
        if isinstance(event, Notification):
            note = {"title": event.title, "body": event.body, "action_url": event.action_url}
            return [frame("notification", now, {"notification": note})]
        return []


# -- the plugin-debug socket (`/api/v1/ws/plugin/debug/{execution_id}`) ----------------------
#
# Frames are `{"type": <kind>, "data": {…}}` (`edge/trace.py` lists the kinds); the
# records so far come as one `debug_data` frame, `{"records": [...]}`.  A client
# pings with the text `ping` (or `{"type": "ping"}`) and gets `pong` the same way.
def debug_frame(record: Mapping[str, Any]) -> str:
    return jsonwire.dumps({"type": record["type"], "data": record["data"]})


def debug_history(records: Sequence[Mapping[str, Any]]) -> str:
    return jsonwire.dumps({"type": "debug_data", "data": {"records": list(records)}})


def debug_error(message: str) -> str:
    return jsonwire.dumps({"type": "error", "data": {"error": message}})


def debug_answer(text: str) -> str:
    """The answer to a client frame: its pong, or an error naming what is accepted."""
    if text.strip() == "ping":
        return "pong"
    try:
        parsed = client_json(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("type") == "ping":
        return jsonwire.dumps({"type": "pong"})
    return debug_error("This socket only answers 'ping'")
