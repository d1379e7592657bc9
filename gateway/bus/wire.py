"""Canonical events on the wire between replicas, as pure functions.

One message per event, whatever the number of rooms it goes to::

    <origin replica id> " " <event number>  "\\n"  {"rooms": [...], "e": {"t": "TextDelta", ...}}
    └──────────── header: read without parsing JSON ──┘

The header lets a replica drop its own messages and the copies of an event it
receives through several of its rooms' channels before decoding anything.
Messages are bounded (`split`): Redis disconnects a subscriber whose output
buffer passes its limit, so one huge event must never reach pub/sub whole
(Open WebUI #25975).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from gateway.events import (
    ChatTitleChanged,
    Event,
    MessageEvent,
    Notification,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    SourcesFound,
    StatusChanged,
    TextDelta,
    Typing,
    Usage,
    UserJoined,
    UserLeft,
    WorkspaceEvent,
)

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        ReplyStarted,
        TextDelta,
        ReasoningDelta,
        StatusChanged,
        SourcesFound,
        ReplyFinished,
        ReplyFailed,
        ChatTitleChanged,
        MessageEvent,
        Typing,
        UserJoined,
        UserLeft,
        Notification,
        WorkspaceEvent,
    )
}
_FIELDS: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TYPES.values()
}
# A ReplyFinished whose text is too big travels without it; receivers read the
# stored reply (it is written before ReplyFinished is published).
CONTENT_IN_STORE = "content_in_store"


class Undeliverable(ValueError):
    """An event that cannot be made to fit in one bus message."""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def event_dict(event: Event) -> dict[str, Any]:
    cls = type(event)
    shaped: dict[str, Any] = {"t": cls.__name__}
    for name in _FIELDS[cls]:
        value = getattr(event, name)
        shaped[name] = value.as_wire() if isinstance(value, Usage) else value
    return shaped


def event_of(shaped: dict[str, Any]) -> Event:
    cls = _TYPES[shaped.pop("t")]
    if "usage" in shaped and isinstance(shaped["usage"], dict):
        shaped["usage"] = Usage.of_wire(shaped["usage"])
    event: Event = cls(**shaped)
    return event


def body(rooms: Sequence[str], event: Event, content_in_store: bool = False) -> str:
    shaped = event_dict(event)
    if content_in_store:
        shaped[CONTENT_IN_STORE] = True
    return _dumps({"rooms": list(rooms), "e": shaped})


def message(origin: str, number: int, encoded_body: str) -> str:
    return f"{origin} {number}\n{encoded_body}"


def header(message: str) -> tuple[str, int]:
    """(origin, number) without decoding the body."""
    head, _, _ = message.partition("\n")
    origin, _, number = head.partition(" ")
    return origin, int(number)


def decode(message: str) -> tuple[list[str], Event, bool]:
    """Rooms, event, and whether its content must be read from the store."""
    _, _, encoded = message.partition("\n")
    data = json.loads(encoded)
    shaped = data["e"]
    in_store = bool(shaped.pop(CONTENT_IN_STORE, False))
    return list(data["rooms"]), event_of(shaped), in_store


def split(rooms: Sequence[str], event: Event, max_bytes: int) -> list[str]:
    """The event as one or more bodies of at most `max_bytes` each.

    A text delta too big is cut into several (same seq: they concatenate back);
    a finished reply too big goes without its content (read from the store);
    anything else too big is `Undeliverable`.
    """
    encoded = body(rooms, event)
    size = len(encoded.encode())
    if size <= max_bytes:
        return [encoded]
    if isinstance(event, TextDelta | ReasoningDelta):
        overhead = len(body(rooms, dataclasses.replace(event, text="")).encode())
        # A character takes up to 6 bytes once JSON-escaped (\\uXXXX).
        step = max(1, (max_bytes - overhead) // 6)
        pieces = [event.text[i : i + step] for i in range(0, len(event.text), step)]
        return [body(rooms, dataclasses.replace(event, text=piece)) for piece in pieces]
    if isinstance(event, ReplyFinished) and event.chat_id is not None:
        bare = body(rooms, dataclasses.replace(event, content=""), content_in_store=True)
        if len(bare.encode()) <= max_bytes:
            return [bare]
    raise Undeliverable(f"{type(event).__name__} of {size} bytes exceeds {max_bytes}")
