"""Golden vectors for the Nadoo codec: events in, exact frames out, and back; no event loop.

The vectors live in `tests/vectors/nadoo/`, three kinds of file::

    events_<case>.json    {"description", "self_id", "now": <epoch s, the encoder's clock>,
                           "events": [{"event": "TextDelta", "chat_id", "message_id",
                                       "seq", "text"}, ...],
                           "frames": [{"type", ..., "timestamp"}, ...]}
    decode_<socket>.json  {"description", "now",
                           "cases": [{"name", "frame": <sent as JSON> | "text": <sent as is>,
                                      "command": {"command": "Say", <fields>} | "error": <frame>}]}
    server_frames.json    {"description", "now",
                           "cases": [{"name", "call", "args" | "error": [class, *args], "frame"}]}

Frames are written in the vectors as objects, keys in the order the wire has
them: the codec sends compact JSON text (no spaces, non-ASCII as is), so each
frame is checked as that exact text and, parsed, as an object.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.commands as commands
import gateway.errors as errors
import gateway.events as events
from gateway.errors import ProtocolError
from gateway.flavours import nadoo
from tests.flavours.vectors import RETIRED_EVENTS, build_event

VECTOR_DIR = Path(__file__).parent.parent / "vectors" / "nadoo"
EVENT_VECTORS = sorted(VECTOR_DIR.glob("events_*.json"))
DECODERS = ("decode_chat", "decode_workspace", "decode_notifications")
SERVER_FRAMES = "server_frames"

# Nadoo's documentation shows whole seconds in UTC with a Z (docs/PROTOCOLS.md §4).
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def wire(value: Any) -> str:
    """The exact text the codec must send for a frame written in a vector."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def exact(value: Any) -> str:
    """JSON text for comparing parsed values: `true` is not `1`; key order is free."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def iso(now: float) -> str:
    # Computed here, not by the codec: whole seconds, truncated.
    return datetime.fromtimestamp(int(now), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encoder_for(vector: dict[str, Any]) -> nadoo.Encoder:
    now = vector["now"]
    return nadoo.Encoder(vector["self_id"], clock=lambda: now)


def encode_each(encoder: nadoo.Encoder, vector: dict[str, Any]) -> list[tuple[Any, list[str]]]:
    """Each event spec with the frames it produced."""
    return [(spec, encode_spec(encoder, spec)) for spec in vector["events"]]


def encode_spec(encoder: nadoo.Encoder, spec: dict[str, Any]) -> list[str]:
    return [] if spec["event"] in RETIRED_EVENTS else encoder.encode(build_event(spec))


def encode_all(encoder: nadoo.Encoder, vector: dict[str, Any]) -> list[str]:
    return [text for _, frames in encode_each(encoder, vector) for text in frames]


def cases(name: str) -> list[Any]:
    listed = load(VECTOR_DIR / f"{name}.json")["cases"]
    names = [case["name"] for case in listed]
    assert len(names) == len(set(names)), f"{name}.json repeats a case name"
    return [pytest.param(case, id=case["name"]) for case in listed]


def sent_text(case: dict[str, Any]) -> str:
    if "text" in case:
        text: str = case["text"]
        return text
    return json.dumps(case["frame"], ensure_ascii=False)


def expected_command(spec: dict[str, Any]) -> commands.Command:
    fields = dict(spec)
    command: commands.Command = commands.COMMAND_TYPES[fields.pop("command")](**fields)
    return command


def test_every_vector_file_is_checked() -> None:
    # A file that matches no pattern would be silently skipped.
    expected = {path.name for path in EVENT_VECTORS}
    expected |= {f"{name}.json" for name in (*DECODERS, SERVER_FRAMES)}
    assert {path.name for path in VECTOR_DIR.glob("*.json")} == expected


# -- Encoder --------------------------------------------------------------------------
@pytest.mark.parametrize("path", EVENT_VECTORS, ids=[p.stem for p in EVENT_VECTORS])
def test_encoder_matches_golden_frames(path: Path) -> None:
    vector = load(path)
    encoder = encoder_for(vector)
    expected = [wire(frame) for frame in vector["frames"]]
    assert encode_all(encoder, vector) == expected
    # One encoder serves a connection's every reply: a second pass is the same.
    assert encode_all(encoder, vector) == expected


@pytest.mark.parametrize("path", EVENT_VECTORS, ids=[p.stem for p in EVENT_VECTORS])
def test_encoder_frames_parse_to_the_golden_objects(path: Path) -> None:
    vector = load(path)
    parsed = [json.loads(text) for text in encode_all(encoder_for(vector), vector)]
    assert exact(parsed) == exact(vector["frames"])


@pytest.mark.parametrize("path", EVENT_VECTORS, ids=[p.stem for p in EVENT_VECTORS])
def test_every_frame_starts_with_type_and_has_a_timestamp(path: Path) -> None:
    # Independently of the golden frames: Nadoo's pages switch on `type`, and
    # every frame carries the time it was sent (docs/PROTOCOLS.md §4).
    vector = load(path)
    for text in encode_all(encoder_for(vector), vector):
        frame = json.loads(text)
        assert isinstance(frame, dict)
        assert next(iter(frame)) == "type"
        assert isinstance(frame["type"], str)
        assert ISO_UTC.match(frame["timestamp"])
        assert frame["timestamp"] == iso(vector["now"])


@pytest.mark.parametrize("path", EVENT_VECTORS, ids=[p.stem for p in EVENT_VECTORS])
def test_text_deltas_count_from_zero_per_reply_and_rebuild_the_text(path: Path) -> None:
    # text-delta frames carry no ids, so the reply each belongs to is the event's.
    vector = load(path)
    sent: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ended: dict[tuple[str, str], dict[str, Any]] = {}
    for spec, frames in encode_each(encoder_for(vector), vector):
        reply = (spec.get("chat_id"), spec.get("message_id"))
        for text in frames:
            frame = json.loads(text)
            if frame["type"] == "text-delta":
                sent.setdefault(reply, []).append(frame)
            elif frame["type"] == "response_end":
                ended[reply] = frame
    for reply, deltas in sent.items():
        assert [frame["index"] for frame in deltas] == list(range(len(deltas)))
        if reply in ended:
            assert "".join(frame["text"] for frame in deltas) == ended[reply]["full_response"]


def test_encoder_uses_its_clock_for_each_frame() -> None:
    ticks = iter([1700000000.0, 1700000061.999])
    encoder = nadoo.Encoder("conn-a", clock=lambda: next(ticks))
    typing = events.UserTyping("s1", "bob", origin="conn-b")
    first, second = encoder.encode(typing) + encoder.encode(typing)
    assert first == '{"type":"typing","user_id":"bob","timestamp":"2023-11-14T22:13:20Z"}'
    assert second == '{"type":"typing","user_id":"bob","timestamp":"2023-11-14T22:14:21Z"}'


# -- decoders -------------------------------------------------------------------------
SOCKETS: dict[str, nadoo.Socket] = {
    "decode_chat": "chat",
    "decode_workspace": "workspace",
    "decode_notifications": "notifications",
}


def check_decoder(name: str, case: dict[str, Any]) -> None:
    now = load(VECTOR_DIR / f"{name}.json")["now"]
    flavour = nadoo.NadooFlavour(SOCKETS[name], "conn-a", clock=lambda: now)
    # The function, and the socket's Flavour.decode that calls it with its clock.
    for decode in (lambda text: getattr(nadoo, name)(text, now), flavour.decode):
        check_decoded(decode, case, now)


def check_decoded(decode: Any, case: dict[str, Any], now: float) -> None:
    text = sent_text(case)
    if "error" in case:
        with pytest.raises(ProtocolError) as raised:
            decode(text)
        assert raised.value.frame == wire(case["error"])
        assert raised.value.message == case["error"]["message"]
        # What the transport sends back is the frame the error carries.
        assert nadoo.error_for(raised.value, now + 3600) == wire(case["error"])
        return
    command = decode(text)
    assert command == expected_command(case["command"])
    assert exact(dataclasses.asdict(command)) == exact(
        {k: v for k, v in case["command"].items() if k != "command"}
    )


@pytest.mark.parametrize("case", cases("decode_chat"))
def test_decode_chat(case: dict[str, Any]) -> None:
    check_decoder("decode_chat", case)


@pytest.mark.parametrize("case", cases("decode_workspace"))
def test_decode_workspace(case: dict[str, Any]) -> None:
    check_decoder("decode_workspace", case)


@pytest.mark.parametrize("case", cases("decode_notifications"))
def test_decode_notifications(case: dict[str, Any]) -> None:
    check_decoder("decode_notifications", case)


def test_a_relayed_workspace_frame_comes_out_as_sent_with_its_sender() -> None:
    # decode_workspace on one member's socket, WorkspaceEvent through the bus,
    # Encoder on another's: the frame is the member's, plus user_id and a fresh timestamp.
    sent = '{"type":"document_updated","document_id":"d1","timestamp":"2020-01-01T00:00:00Z"}'
    command = nadoo.decode_workspace(sent, 1700000000.0)
    assert isinstance(command, commands.Broadcast)
    event = events.WorkspaceEvent("w1", "bob", command.type, command.data, origin="conn-b")
    encoder = nadoo.Encoder("conn-a", clock=lambda: 1700000000.0)
    assert encoder.encode(event) == [
        '{"type":"document_updated","document_id":"d1","user_id":"bob",'
        '"timestamp":"2023-11-14T22:13:20Z"}'
    ]


# -- server frames --------------------------------------------------------------------
def build_error(spec: list[Any]) -> errors.GatewayError:
    name, *args = spec
    error: errors.GatewayError = getattr(errors, name)(*args)
    return error


@pytest.mark.parametrize("case", cases(SERVER_FRAMES))
def test_server_frames(case: dict[str, Any]) -> None:
    now = load(VECTOR_DIR / f"{SERVER_FRAMES}.json")["now"]
    if case["call"] == "error_for":
        text = nadoo.error_for(build_error(case["error"]), now)
    else:
        text = getattr(nadoo, case["call"])(*case["args"], now)
    assert text == wire(case["frame"])
    assert exact(json.loads(text)) == exact(case["frame"])
    assert next(iter(json.loads(text))) == "type"


NOW = 1_700_000_000.25
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
JSON_DATA = st.dictionaries(
    st.sampled_from(["a", "b", "type", "timestamp", "user_id", "ü", "\u2028"])
    | st.text(max_size=4),
    st.recursive(
        JSON_LEAVES,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    ),
    max_size=5,
)


@settings(max_examples=2000, deadline=None)
@given(
    kind=st.sampled_from(sorted(nadoo.WORKSPACE_EVENTS)), data=JSON_DATA, user=st.text(max_size=6)
)
def test_a_member_frame_spliced_is_the_frame_written_whole(
    kind: str, data: dict[str, Any], user: str
) -> None:
    # The data's JSON is written once per event, for every member it goes to.
    event = events.WorkspaceEvent("w", user, kind, data)
    whole = nadoo.frame(kind, NOW, {**data, "user_id": user})
    assert nadoo.member_frame(event, NOW) == whole
    assert event.size == len(event.data_json) and json.loads(event.data_json) == data
