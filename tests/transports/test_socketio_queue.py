"""A user's tabs cost one encode per event, not one per tab (issue 14, item 7); a
delta's packet, written by orjson, is the JSON python-socketio would send."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import engineio
import socketio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.events import ReasoningDelta, ReplyStarted, TextDelta
from gateway.flavours.openwebui import SocketEncoder
from gateway.transports import socketio_queue as engine


def tab() -> SimpleNamespace:
    return SimpleNamespace(queue=asyncio.Queue(), closed=False)


def test_one_encode_per_event_whatever_the_number_of_tabs() -> None:
    tabs = [tab() for _ in range(5)]
    events = [
        ReplyStarted("c1", "a1", 0, "alice", None, "m", 1700000000.0),
        TextDelta("c1", "a1", 1, "Hello"),
        TextDelta("c1", "a1", 2, " world"),
    ]
    before = engine.ENCODED.encodes
    for event in events:
        for sock in tabs:  # as the hub delivers: one event to every tab, then the next
            engine.enqueue(sock, event)
    assert engine.ENCODED.encodes - before == len(events)
    received = [[sock.queue.get_nowait() for _ in range(sock.queue.qsize())] for sock in tabs]
    assert all(len(packets) == len(received[0]) > 0 for packets in received)
    for packets in received:
        assert [p.packet_type for p in packets] == [engineio.packet.MESSAGE] * len(packets)
        assert [p.data for p in packets] == [p.data for p in received[0]]
    # What a client decodes: Socket.IO EVENT packets `2["events", {...}]`, deltas in order.
    names, deltas = set(), []
    for packet in received[0]:
        assert packet.data.startswith("2")
        name, payload = json.loads(packet.data[1:])
        names.add(name)
        if payload["data"]["type"] == "chat:message:delta":
            deltas.append(payload["data"]["data"]["content"])
    assert names == {"events"} and "".join(deltas) == "Hello world"


def test_a_new_event_equal_to_the_last_is_encoded_again() -> None:
    """Identity, not equality: two deltas with the same text are two events."""
    sock = tab()
    before = engine.ENCODED.encodes
    engine.enqueue(sock, TextDelta("c1", "a1", 1, "x"))
    engine.enqueue(sock, TextDelta("c1", "a1", 1, "x"))
    assert engine.ENCODED.encodes - before == 2 and sock.queue.qsize() == 2


TEXTS = st.text() | st.sampled_from(["\ud83d", "ok \udfff", "Grüße ✓", "\x00\u2028", '"\\'])


@settings(max_examples=2000, deadline=None)
@given(
    TEXTS,
    st.none() | st.text(max_size=8),
    st.integers(0, 2**40),
    st.none() | st.integers(0, 5),
    st.booleans(),
    st.booleans(),
)
def test_a_delta_packet_is_the_json_python_socketio_would_send(
    text: str, chat_id: str | None, seq: int, item: int | None, reasoning: bool, numbered: bool
) -> None:
    """Deltas' packets are written by orjson: what a client decodes is what
    python-socketio's own packet gives, and the text is `json`'s with non-ASCII as is;
    a lone surrogate travels \\u-escaped, as python-socketio writes it."""
    kind = ReasoningDelta if reasoning else TextDelta
    event = kind(chat_id, "a1", seq, text, item)
    encoder = SocketEncoder(seq=numbered)
    sock = tab()
    engine.enqueue(sock, event, numbered)
    sent = [sock.queue.get_nowait().data for _ in range(sock.queue.qsize())]
    frames = encoder.encode(event)
    assert len(sent) == len(frames)
    for data, (name, payload) in zip(sent, frames, strict=True):
        theirs = socketio.packet.Packet(socketio.packet.EVENT, data=[name, payload]).encode()
        decoded = socketio.packet.Packet(encoded_packet=data)
        assert decoded.packet_type == socketio.packet.EVENT and decoded.namespace is None
        assert decoded.data == socketio.packet.Packet(encoded_packet=theirs).data == [name, payload]
        try:
            text.encode()
        except UnicodeEncodeError:
            assert data == theirs
        else:
            assert data == "2" + json.dumps(
                [name, payload], ensure_ascii=False, separators=(",", ":")
            )
