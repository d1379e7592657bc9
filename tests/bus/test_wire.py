"""The bus's wire codec, pure: every event there and back, the header read without JSON,
and `split` keeping each message under the bound (Open WebUI #25975)."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import pytest

from gateway.bus import wire
from gateway.events import (
    Event,
    MessageEvent,
    Notification,
    ReasoningDelta,
    ReplyFailed,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    SourcesFound,
    StatusChanged,
    TextDelta,
    ToolCallDelta,
    Usage,
    UserJoined,
    UserLeft,
    UserTyping,
    WorkspaceEvent,
)

ROOMS = ["user:u1", "chat:c1"]
ORIGIN = "0123456789ab"

# Nested as upstreams send references: Open WebUI's {"source", "document": [...],
# "metadata": [{...}]} and RAGFlow's {"chunks": [{...}], "doc_aggs": [...]}.
SOURCES: list[dict[str, Any]] = [
    {
        "source": {"id": "d1", "name": "Handbuch für Größen.pdf"},
        "document": ["erste Seite", "zweite « Seite »"],
        "metadata": [{"page": 1, "score": 0.83, "tags": ["a", None, True]}],
    },
    {"chunks": [{"id": "k1", "positions": [[1, 2, 3, 4]]}], "doc_aggs": []},
]

# One of every event type in `gateway.events`, with non-ASCII text and nested values.
EVERY_EVENT: list[Event] = [
    ReplyStarted("c1", "m1", 0, "u1", "p1", "gpt-4o", 1712345678.25),
    ReplyStarted(None, "m1", 0, "u1", None, "gpt-4o", 0.0),
    TextDelta("c1", "m1", 1, 'héllo 中文 😀 \x01\n"quoted" \\'),
    ReasoningDelta("c1", "m1", 2, "думаю…"),
    ToolCallDelta(None, "m1", 2, 0, "", "call_1", "wetter_für", {"extra_content": {"g": [1]}}),
    ToolCallDelta(None, "m1", 3, 0, '{"stadt": "Zürich"}'),
    StatusChanged("c1", "m1", 3, "Recherche « web »", False),
    StatusChanged("c1", "m1", 4, "done", True, action="web_search"),
    SourcesFound("c1", "m1", 5, SOURCES),
    ReplyFinished("c1", "m1", 6, "Antwort: ä ö ü 😀", Usage(12, 34), "stop", 1.5),
    ReplyFinished(
        "c1", "m1", 6, "x", Usage(12, 34, estimated=True), "length", 2.0, True, "Titel é"
    ),
    ReplyFinished(None, "m1", 6, "api only", Usage(1, 2, estimated=True), "stop", 0.1),
    ReplyFailed("c1", "m1", 7, "upstream_error", "Upstream sagte: nein", "teilweise…"),
    ReplySnapshot("c1", "m1", 8, "bis hier…", False, True),
    MessageEvent("c1", "m1", 9, "chat:message:favorite", {"a": [1, {"b": None}], "é": "中"}),
    MessageEvent("c1", "m1", 9, "ping"),
    UserTyping("s1", "u1", "conn-1"),
    UserJoined("workspace_w1", "u1", "conn-1"),
    UserLeft("workspace_w1", "u1"),
    Notification("u1", "Antwort fertig", "Dein Chat « Über Größen » ist fertig", "/c/c1"),
    Notification("u1", "t", "b"),
    WorkspaceEvent("w1", "u1", "doc.updated", {"doc": {"id": "d1", "pages": [1, 2]}}, "c-2"),
]


def through_the_wire(rooms: list[str], event: Event, number: int = 7) -> str:
    return wire.message(ORIGIN, number, wire.body(rooms, event))


def test_every_event_type_is_covered() -> None:
    assert {type(event) for event in EVERY_EVENT} == set(typing.get_args(Event))


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    message = through_the_wire(ROOMS, event)
    assert wire.header(message) == (ORIGIN, 7)
    rooms, decoded, in_store, _ = wire.decode(message)
    assert rooms == ROOMS
    assert decoded == event
    assert type(decoded) is type(event)
    assert in_store is False


def test_usage_keeps_estimated() -> None:
    for estimated in (True, False):
        event = ReplyFinished("c1", "m1", 3, "x", Usage(5, 7, estimated), "stop", 0.5)
        _, decoded, _, _ = wire.decode(through_the_wire(ROOMS, event))
        assert isinstance(decoded, ReplyFinished)
        assert decoded.usage == Usage(5, 7, estimated)
        assert decoded.usage.total_tokens == 12


def test_body_is_utf8_not_escaped() -> None:
    # ensure_ascii=False: "中" costs 3 bytes on the wire, not the 6 of "\\u4e2d".
    encoded = wire.body(ROOMS, TextDelta("c1", "m1", 0, "中"))
    assert "中" in encoded and "\\u" not in encoded


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("abc 1\n{}", ("abc", 1)),
        ("0123456789ab 42\n{not json at all", ("0123456789ab", 42)),
        ("r 9007199254740993\n", ("r", 9007199254740993)),
        ("r 5", ("r", 5)),
    ],
)
def test_header_reads_origin_and_number_without_json(
    message: str, expected: tuple[str, int]
) -> None:
    assert wire.header(message) == expected


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_split_small_event_is_one_body(event: Event) -> None:
    bodies = wire.split(ROOMS, event, 64 * 1024)
    assert bodies == [wire.body(ROOMS, event)]


def size(encoded: str) -> int:
    return len(encoded.encode())


# Each text is well past the bound; "\x01" is escaped to 6 bytes ("\\u0001"), "é中😀" are
# 2, 3 and 4 bytes of UTF-8, '"' and '\\' 2 bytes each once escaped.
BIG_TEXTS = {
    "ascii": "abcdefghij" * 2_000,
    "control": "\x01" * 5_000,
    "multibyte": "é中😀" * 3_000,
    "escaped": '"\\' * 4_000,
    "mixed": 'a\x01é中😀\n"\\\x1f' * 1_500,
}


@pytest.mark.parametrize("kind", [TextDelta, ReasoningDelta])
@pytest.mark.parametrize("max_bytes", [512, 4096])
@pytest.mark.parametrize("text", list(BIG_TEXTS.values()), ids=list(BIG_TEXTS))
def test_split_big_delta_into_bounded_pieces(
    kind: type[TextDelta | ReasoningDelta], max_bytes: int, text: str
) -> None:
    event = kind("c1", "m1", 17, text)
    assert size(wire.body(ROOMS, event)) > max_bytes
    bodies = wire.split(ROOMS, event, max_bytes)
    assert len(bodies) > 1
    pieces, marks = [], []
    for encoded in bodies:
        assert size(encoded) <= max_bytes
        rooms, piece, in_store, more = wire.decode(wire.message(ORIGIN, 1, encoded))
        assert rooms == ROOMS and in_store is False
        assert type(piece) is kind
        assert (piece.chat_id, piece.message_id, piece.seq) == ("c1", "m1", 17)
        assert piece.text
        pieces.append(piece.text)
        marks.append(more)
    assert "".join(pieces) == text
    # Every piece but the last says more is to come (the receiver puts them together).
    assert marks == [True] * (len(bodies) - 1) + [False]


def test_split_big_delta_of_an_api_completion() -> None:
    # chat_id None (nothing stored) changes nothing for deltas: they are cut all the same.
    event = TextDelta(None, "m1", 3, "é" * 10_000)
    bodies = wire.split(["user:u1"], event, 1024)
    assert all(size(encoded) <= 1024 for encoded in bodies)
    pieces = [wire.decode(wire.message(ORIGIN, 1, encoded))[1] for encoded in bodies]
    assert all(isinstance(piece, TextDelta) and piece.seq == 3 for piece in pieces)
    assert "".join(piece.text for piece in pieces if isinstance(piece, TextDelta)) == event.text


def test_split_big_finished_reply_goes_without_content() -> None:
    event = ReplyFinished(
        "c1", "m1", 40, "é中😀" * 100_000, Usage(10, 20, True), "stop", 3.5, False, "Titel"
    )
    bodies = wire.split(ROOMS, event, 4096)
    assert len(bodies) == 1
    assert size(bodies[0]) <= 4096
    rooms, decoded, in_store, _ = wire.decode(wire.message(ORIGIN, 1, bodies[0]))
    assert rooms == ROOMS
    assert in_store is True
    assert decoded == dataclasses.replace(event, content="")


def test_split_finished_reply_that_fits_keeps_its_content() -> None:
    event = ReplyFinished("c1", "m1", 40, "short", Usage(1, 2), "stop", 0.1)
    (encoded,) = wire.split(ROOMS, event, 4096)
    _, decoded, in_store, _ = wire.decode(wire.message(ORIGIN, 1, encoded))
    assert decoded == event and in_store is False


BIG = "x" * 10_000

UNDELIVERABLE: list[Event] = [
    # Nothing stored to read it back from.
    ReplyFinished(None, "m1", 4, BIG, Usage(1, 2), "stop", 0.1),
    StatusChanged("c1", "m1", 1, BIG, False),
    SourcesFound("c1", "m1", 2, [{"document": [BIG]}]),
    ReplyFailed("c1", "m1", 3, "upstream_error", "failed", BIG),
    MessageEvent("c1", "m1", 6, "x", {"blob": BIG}),
    Notification("u1", "t", BIG),
    WorkspaceEvent("w1", "u1", "doc", {"blob": BIG}),
]


@pytest.mark.parametrize("event", UNDELIVERABLE, ids=lambda e: type(e).__name__)
def test_split_other_big_events_are_undeliverable(event: Event) -> None:
    with pytest.raises(wire.Undeliverable):
        wire.split(ROOMS, event, 4096)


def test_split_finished_reply_too_big_even_without_content() -> None:
    # The title alone passes the bound: no body can carry it.
    event = ReplyFinished("c1", "m1", 4, BIG, Usage(1, 2), "stop", 0.1, title=BIG)
    with pytest.raises(wire.Undeliverable):
        wire.split(ROOMS, event, 4096)


# -- what cannot be trusted is refused, message by message -------------------------------------
GOOD = {"t": "TextDelta", "chat_id": "c1", "message_id": "m1", "seq": 1, "text": "x"}
FINISHED = wire.event_dict(ReplyFinished("c1", "m1", 6, "done", Usage(1, 2), "stop", 1.5))


def shaped_message(rooms: Any, event: Any) -> str:
    return wire.message(ORIGIN, 1, json.dumps({"rooms": rooms, "e": event}))


MALFORMED: dict[str, str] = {
    "not JSON": f"{ORIGIN} 1\n{{not json",
    "not an object": f"{ORIGIN} 1\n[1, 2]",
    "no event": f'{ORIGIN} 1\n{{"rooms": []}}',
    "rooms not a list": shaped_message("user:x", GOOD),
    "a room not a string": shaped_message([1], GOOD),
    "unknown type": shaped_message(ROOMS, {**GOOD, "t": "NoSuchEvent"}),
    "no type": shaped_message(ROOMS, {k: v for k, v in GOOD.items() if k != "t"}),
    "a type not a name": shaped_message(ROOMS, {**GOOD, "t": ["TextDelta"]}),
    "seq a string": shaped_message(ROOMS, {**GOOD, "seq": "1"}),
    "seq a bool": shaped_message(ROOMS, {**GOOD, "seq": True}),
    "text a number": shaped_message(ROOMS, {**GOOD, "text": 5}),
    "chat id a list": shaped_message(ROOMS, {**GOOD, "chat_id": ["c1"]}),
    "a field missing": shaped_message(ROOMS, {"t": "TextDelta", "seq": 1, "text": "x"}),
    "a field too many": shaped_message(ROOMS, {**GOOD, "colour": "red"}),
    "usage not a usage": shaped_message(ROOMS, {**FINISHED, "usage": {"prompt_tokens": "many"}}),
    "sources not dicts": shaped_message(
        ROOMS, {"t": "SourcesFound", "chat_id": "c1", "message_id": "m1", "seq": 1, "sources": [1]}
    ),
    "a bad surrogate": f'{ORIGIN} 1\n{{"rooms": [], "e": {{"t": "TextDelta", "text": "\\ud800"}}}}',
}


@pytest.mark.parametrize("message", list(MALFORMED.values()), ids=list(MALFORMED))
def test_decode_refuses_what_it_cannot_trust(message: str) -> None:
    with pytest.raises(wire.Malformed):
        wire.decode(message)


def test_a_float_field_takes_an_integer() -> None:
    shaped = {**FINISHED, "elapsed_s": 2}
    _, event, _, _ = wire.decode(shaped_message(ROOMS, shaped))
    assert isinstance(event, ReplyFinished) and event.elapsed_s == 2


@pytest.mark.parametrize("message", ["", "abc\n{}", " 1\n{}", "abc x\n{}", "abc -1\n{}", "a ²\n"])
def test_header_refuses_a_message_without_one(message: str) -> None:
    with pytest.raises(wire.Malformed):
        wire.header(message)


def test_announcements_there_and_back() -> None:
    for kind, rooms, reset in [("watch", ROOMS, True), ("unwatch", ["user:u1"], False)]:
        said = wire.announcement_of(wire.announcement(ORIGIN, kind, rooms, reset))
        assert said == wire.Announcement(ORIGIN, kind, rooms, reset)
    assert wire.announcement_of(wire.announcement(ORIGIN, "sync", [])).kind == "sync"


@pytest.mark.parametrize(
    "data",
    [
        "nope",
        "[]",
        '{"bus": "watch", "rooms": []}',
        '{"bus": "watch", "rooms": [], "from": ""}',
        '{"bus": "watch", "rooms": "user:x", "from": "r"}',
        '{"bus": "watch", "rooms": [1], "from": "r"}',
        '{"bus": "shout", "rooms": [], "from": "r"}',
    ],
)
def test_announcement_refuses_what_it_cannot_trust(data: str) -> None:
    with pytest.raises(wire.Malformed):
        wire.announcement_of(data)


def test_commands_there_and_back() -> None:
    sent = {"cancel": {"task_id": "t1", "chat_id": None}}
    assert wire.command_of(wire.command(ORIGIN, sent)) == {**sent, "from": ORIGIN}


@pytest.mark.parametrize("data", ["nope", "[]", '{"cancel": {}}', '{"from": 7}'])
def test_command_refuses_what_it_cannot_trust(data: str) -> None:
    with pytest.raises(wire.Malformed):
        wire.command_of(data)


def test_a_workspace_events_size_is_not_sent_but_counted_again_by_its_receiver() -> None:
    # Counted against an outbox's bound (`WorkspaceEvent.size`): each replica counts
    # it as it makes the event, so the wire stays what replicas before it read.
    event = WorkspaceEvent("w1", "u1", "doc", {"text": "é" * 10})
    shaped = wire.event_dict(event)
    assert "size" not in shaped
    back = wire.event_of(json.loads(json.dumps(shaped)))
    assert back == event and isinstance(back, WorkspaceEvent) and back.size == event.size > 20
