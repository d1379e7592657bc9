"""What replicas say to each other on Redis, as pure functions: the room events,
the watcher mirror's announcements and the control commands.

Every decoder refuses what it cannot trust with `Malformed` (bad UTF-8 or JSON,
an unknown event type, a missing field, a field of the wrong type), so a
listener can count and skip one bad message and go on with the next.

Room events are bounded (`split`): Redis disconnects a subscriber whose output
buffer passes its limit, so one huge event must never reach pub/sub whole
(Open WebUI #25975).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeGuard

from gateway import jsonwire
from gateway.events import (
    EVENT_TYPES,
    Event,
    ReasoningDelta,
    ReplyFinished,
    TextDelta,
    Usage,
)

# Derived from the `Event` union: a new event class travels without being listed here.
_TYPES: dict[str, type[Any]] = dict(EVENT_TYPES)
_FIELDS: dict[type[Any], tuple[str, ...]] = {
    # (Not the fields made by the event itself: `WorkspaceEvent.size`, `data_json`.)
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.init) for cls in _TYPES.values()
}
# A ReplyFinished whose text is too big travels without it (and without its
# `output` items: a web app keeps those it was streamed); receivers read the
# stored reply (it is written before ReplyFinished is published).
CONTENT_IN_STORE = "content_in_store"
# Beside "rooms" and "e": a piece of a delta cut by `split`, more pieces to come.
MORE = "more"


class Undeliverable(ValueError):
    """An event that cannot be made to fit in one bus message."""


class Malformed(ValueError):
    """A message that cannot be trusted: skipped (and counted) by whoever received it."""


def _dumps(value: Any) -> str:
    return jsonwire.dumps(value)


def loads(data: str) -> Any:
    try:
        # `json`, not `jsonwire.loads`: a client's data (a message event's, a Nadoo
        # workspace event's) may hold an integer past 64 bits, and must arrive whole.
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError, and bad surrogates
        raise Malformed(f"not JSON: {exc}") from None


def strings(value: Any) -> TypeGuard[list[str]]:
    """A list of strings (rooms, as JSON brings them)?"""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# -- field types, checked on the way in ---------------------------------------------------
Check = Callable[[Any], bool]


def _check(hint: Any) -> Check:
    """A predicate for values of a field annotated `hint` (as JSON brings them).
    Cheap on purpose: it runs for every field of every event a replica receives."""
    if hint is Any:
        return lambda value: True
    if hint is int:  # `type`, not isinstance: True is not a number here
        return lambda value: type(value) is int
    if hint is float:  # JSON writes 2.0 as 2.0, but a producer may have had an int
        return lambda value: type(value) is float or type(value) is int
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if all(arg not in (int, float) and typing.get_origin(arg) is None for arg in args):
            return lambda value: isinstance(value, args)  # str | None, in one call
        options = [_check(arg) for arg in args]
        return lambda value: any(option(value) for option in options)
    if origin is list and args:
        item = _check(args[0])
        return lambda value: isinstance(value, list) and all(item(v) for v in value)
    if origin is not None:
        hint = origin  # dict[str, Any]: a dict; its values are the client's data
    return lambda value: isinstance(value, hint)


def _checks(cls: type[Any]) -> tuple[tuple[str, Check], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((name, _check(hints[name])) for name in _FIELDS[cls])


_CHECKS: dict[type[Any], tuple[tuple[str, Check], ...]] = {
    cls: _checks(cls) for cls in _TYPES.values()
}


# -- events ---------------------------------------------------------------------------------
def event_dict(event: Event) -> dict[str, Any]:
    cls = type(event)
    shaped: dict[str, Any] = {"t": cls.__name__}
    for name in _FIELDS[cls]:
        value = getattr(event, name)
        shaped[name] = value.as_wire() if isinstance(value, Usage) else value
    return shaped


def event_of(shaped: dict[str, Any]) -> Event:
    """The event `event_dict` made; `Malformed` if it is not one, field by field."""
    name = shaped.pop("t", None)
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise Malformed("unknown event type")
    if isinstance(shaped.get("usage"), dict):
        try:
            shaped["usage"] = Usage.of_wire(shaped["usage"])
        except (KeyError, TypeError, ValueError):
            raise Malformed(f"{cls.__name__}.usage is not a usage") from None
    for name, check in _CHECKS[cls]:
        if name in shaped and not check(shaped[name]):
            raise Malformed(f"{cls.__name__}.{name} has the wrong type")
    try:
        event: Event = cls(**shaped)
    except TypeError:  # a field missing, or one it does not have
        raise Malformed(f"{cls.__name__} with fields {sorted(shaped)}") from None
    return event


# One room event per message, whatever the number of rooms it goes to:
#
#     <origin replica id> " " <event number>  "\n"  {"rooms": [...], "e": {"t": "TextDelta", ...}}
#     └──────────── header: read without parsing JSON ──┘
#
# The header lets a replica drop its own messages, and the copies of an event it
# receives through several of its rooms' channels, before decoding anything.  A
# finished reply too big to carry has "content_in_store": true beside its fields;
# each piece of a cut delta but its last has "more": true beside "rooms" (a replica
# that does not know it reads the pieces as deltas of one seq, as before).
def body(
    rooms: Sequence[str], event: Event, content_in_store: bool = False, more: bool = False
) -> str:
    shaped = event_dict(event)
    if content_in_store:
        shaped[CONTENT_IN_STORE] = True
    if more:
        return _dumps({"rooms": list(rooms), "e": shaped, MORE: True})
    return _dumps({"rooms": list(rooms), "e": shaped})


def message(origin: str, number: int, encoded_body: str) -> str:
    return f"{origin} {number}\n{encoded_body}"


def header(message: str) -> tuple[str, int]:
    """(origin, number) without decoding the body."""
    head, _, _ = message.partition("\n")
    origin, _, number = head.partition(" ")
    if not origin or not (number.isascii() and number.isdigit()):
        raise Malformed("no header")
    return origin, int(number)


class Decoded(NamedTuple):
    rooms: list[str]
    event: Event
    in_store: bool  # its content must be read from the store
    more: bool  # a piece of a delta, more to come (`split`)


def decode(message: str) -> Decoded:
    """Rooms, event, whether its content must be read from the store, and whether it
    is a delta's piece with more to come."""
    _, _, encoded = message.partition("\n")
    data = loads(encoded)
    if not isinstance(data, dict) or not isinstance(data.get("e"), dict):
        raise Malformed("no event")
    rooms = data.get("rooms")
    if not strings(rooms):
        raise Malformed("no rooms")
    shaped = data["e"]
    in_store = shaped.pop(CONTENT_IN_STORE, False) is True
    return Decoded(rooms, event_of(shaped), in_store, data.get(MORE) is True)


def split(rooms: Sequence[str], event: Event, max_bytes: int) -> list[str]:
    """The event as one or more bodies of at most `max_bytes` each.

    A text delta too big is cut into several, each but the last marked "more" (the
    receiving replica puts them together again: one event, as it was published);
    a finished reply too big goes without its content (read from the store);
    anything else too big is `Undeliverable`.
    """
    encoded = body(rooms, event)
    size = len(encoded.encode())
    if size <= max_bytes:
        return [encoded]
    if isinstance(event, TextDelta | ReasoningDelta):
        overhead = len(body(rooms, dataclasses.replace(event, text=""), more=True).encode())
        # A character takes up to 6 bytes once JSON-escaped (\\uXXXX).
        step = max(1, (max_bytes - overhead) // 6)
        pieces = [event.text[i : i + step] for i in range(0, len(event.text), step)]
        last = len(pieces) - 1
        return [
            body(rooms, dataclasses.replace(event, text=piece), more=i < last)
            for i, piece in enumerate(pieces)
        ]
    if isinstance(event, ReplyFinished) and event.chat_id is not None:
        bare = body(
            rooms, dataclasses.replace(event, content="", output=None), content_in_store=True
        )
        if len(bare.encode()) <= max_bytes:
            return [bare]
    raise Undeliverable(f"{type(event).__name__} of {size} bytes exceeds {max_bytes}")


# -- the watcher mirror (`mirror.py`), on the channel <prefix>mirror ------------------------
#
#     {"bus": "watch",   "rooms": [...], "from": "<replica id>", "reset": true|false}
#     {"bus": "unwatch", "rooms": [...], "from": "<replica id>"}
#     {"bus": "sync",    "rooms": [],    "from": "<replica id>"}   "everyone, your whole list"
#
# "reset": these rooms and no others (the first chunk of a whole list).
MIRROR_KINDS = frozenset({"watch", "unwatch", "sync"})


class Announcement(NamedTuple):
    sender: str
    kind: str
    rooms: list[str]
    reset: bool = False


def announcement(sender: str, kind: str, rooms: list[str], reset: bool = False) -> str:
    shaped: dict[str, Any] = {"bus": kind, "rooms": rooms, "from": sender}
    if reset:
        shaped["reset"] = True
    return _dumps(shaped)


def announcement_of(data: str) -> Announcement:
    shaped = loads(data)
    if not isinstance(shaped, dict) or shaped.get("bus") not in MIRROR_KINDS:
        raise Malformed("not an announcement")
    sender, rooms = shaped.get("from"), shaped.get("rooms")
    if not isinstance(sender, str) or not sender:
        raise Malformed("an announcement from nobody")
    if not strings(rooms):
        raise Malformed("an announcement without rooms")
    return Announcement(sender, shaped["bus"], rooms, shaped.get("reset") is True)


# -- commands to every replica (`Replicas.broadcast`), on the channel <prefix>control -------
#
#     {"cancel": {"user_id": ..., "chat_id": ..., "task_id": ..., "room": ...},
#      "from": "<replica id>"}
#
# The command's own keys are its caller's (`chat/running.py`); "from" is added
# here, and a replica drops what it sent itself.
def command(sender: str, message: dict[str, Any]) -> str:
    return _dumps({**message, "from": sender})


def command_of(data: str) -> dict[str, Any]:
    shaped = loads(data)
    if not isinstance(shaped, dict) or not isinstance(shaped.get("from"), str):
        raise Malformed("not a command")
    return shaped
