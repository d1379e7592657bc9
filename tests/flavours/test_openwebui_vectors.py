"""Golden vectors for the Open WebUI codec: events in, exact Socket.IO frames out; no event loop.

The vectors live in `tests/vectors/openwebui/`, two kinds of file::

    events_<case>.json    {"description",
                           "events": [{"event": "TextDelta", "chat_id", "message_id",
                                       "seq", "text"}, ...],
                           "frames": [["events", {"chat_id", "message_id",
                                                  "data": {"type", "data"}}], ...]}
    decode_<name>.json    {"description",
                           "cases": [{"name", <input>, <expected> or "error"}, ...]}

`<name>` is the decoder the cases feed; each case is its own test id.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.commands import Ask, Authenticate, ChatSignal, ReplyTarget
from gateway.errors import BadRequest, ProtocolError
from gateway.flavours.openwebui import (
    OpenWebUIFlavour,
    SocketEncoder,
    decode_chat_signal,
    decode_completion_request,
    decode_join,
    is_stored_request,
    is_web_app_turn,
)
from tests.flavours.vectors import RETIRED_EVENTS, build_event

VECTOR_DIR = Path(__file__).parent.parent / "vectors" / "openwebui"
EVENT_VECTORS = sorted(VECTOR_DIR.glob("events_*.json"))
DECODERS = ("decode_completion_request", "decode_user_join", "decode_chat_event")



def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def exact(value: Any) -> str:
    """JSON text, as python-socketio sends it: `true` is not `1`, a tuple is a list.

    Keys are sorted because docs/PROTOCOLS.md leaves their order free.
    """
    return json.dumps(value, sort_keys=True, ensure_ascii=False)



def encode_spec(encoder: SocketEncoder, spec: dict[str, Any]) -> list[Any]:
    return [] if spec["event"] in RETIRED_EVENTS else encoder.encode(build_event(spec))


def encode_all(encoder: SocketEncoder, vector: dict[str, Any]) -> list[Any]:
    return [frame for spec in vector["events"] for frame in encode_spec(encoder, spec)]


def cases(decoder: str) -> list[Any]:
    listed = load(VECTOR_DIR / f"{decoder}.json")["cases"]
    names = [case["name"] for case in listed]
    assert len(names) == len(set(names)), f"{decoder}.json repeats a case name"
    return [pytest.param(case, id=case["name"]) for case in listed]


def test_every_vector_file_is_checked() -> None:
    # A file that matches neither pattern would be silently skipped.
    expected = {path.name for path in EVENT_VECTORS} | {f"{name}.json" for name in DECODERS}
    assert {path.name for path in VECTOR_DIR.glob("*.json")} == expected


# -- SocketEncoder ------------------------------------------------------------------
@pytest.mark.parametrize("path", EVENT_VECTORS, ids=[p.stem for p in EVENT_VECTORS])
def test_encoder_matches_golden_frames(path: Path) -> None:
    vector = load(path)
    encoder = SocketEncoder()
    assert exact(encode_all(encoder, vector)) == exact(vector["frames"])
    # One encoder serves a connection's every reply: a second pass is the same.
    assert exact(encode_all(encoder, vector)) == exact(vector["frames"])


@pytest.mark.parametrize("path", EVENT_VECTORS, ids=[p.stem for p in EVENT_VECTORS])
def test_every_frame_has_the_events_shape(path: Path) -> None:
    # Independently of the golden frames: the web app reads exactly
    #   {"chat_id", "message_id", "data": {"type", "data"}}
    # under the event name `events`, addressed to the event's own message.
    encoder = SocketEncoder()
    for spec in load(path)["events"]:
        for name, payload in encode_spec(encoder, spec):
            assert name == "events"
            assert set(payload) == {"chat_id", "message_id", "data"}
            assert set(payload["data"]) == {"type", "data"}
            assert isinstance(payload["data"]["type"], str)
            assert (payload["chat_id"], payload["message_id"]) == (
                spec["chat_id"],
                spec["message_id"],
            )


@pytest.mark.parametrize("path", EVENT_VECTORS, ids=[p.stem for p in EVENT_VECTORS])
def test_deltas_rebuild_the_text(path: Path) -> None:
    # chat:message:delta appends (docs/PROTOCOLS.md §1.1), so the deltas sent are the text,
    # whole; so do the answer's deltas of a reply shown as `output` items.
    vector = load(path)
    encoder = SocketEncoder()
    sent = "".join(
        text_of(payload["data"])
        for spec in vector["events"]
        for _, payload in encode_spec(encoder, spec)
    )
    text = "".join(spec["text"] for spec in vector["events"] if spec["event"] == "TextDelta")
    assert sent == text


def text_of(data: dict[str, Any]) -> str:
    if data["type"] == "chat:message:delta":
        return str(data["data"]["content"])
    if data["type"] == "response:completion" and data["data"]["type"].endswith("output_text.delta"):
        return str(data["data"]["delta"])
    return ""


# -- request decoders ------------------------------------------------------------------
def expected_ask(spec: dict[str, Any]) -> Ask:
    """The vector lists only the fields that differ from Ask's defaults."""
    fields = dict(spec)
    fields["targets"] = tuple(ReplyTarget(**target) for target in fields.get("targets", []))
    return Ask(**fields)


@pytest.mark.parametrize("case", cases("decode_completion_request"))
def test_decode_completion_request(case: dict[str, Any]) -> None:
    body = case["body"]
    assert is_stored_request(body) is case["stored"]
    if "error" in case:
        with pytest.raises(BadRequest) as raised:
            decode_completion_request(body)
        assert case["error"] in raised.value.message
        return
    ask = decode_completion_request(body)
    assert exact(dataclasses.asdict(ask)) == exact(dataclasses.asdict(expected_ask(case["ask"])))
    assert is_web_app_turn(ask) is case["web_app_turn"]


@pytest.mark.parametrize("case", cases("decode_user_join"))
def test_decode_user_join(case: dict[str, Any]) -> None:
    # The socket's decode, the function it calls, and the old name the transport uses.
    decoders = [
        lambda data: OpenWebUIFlavour().decode(("user-join", data)),
        decode_join,
        ]
    if "error" in case:
        for decode in decoders:
            with pytest.raises(ProtocolError) as raised:
                decode(case["data"])
            assert case["error"] in raised.value.message
            assert raised.value.frame is None  # refused: no ack
        return
    assert OpenWebUIFlavour().decode(("user-join", case["data"])) == Authenticate(case["token"])
    assert decode_join(case["data"]) == Authenticate(case["token"])


@pytest.mark.parametrize("case", cases("decode_chat_event"))
def test_decode_chat_event(case: dict[str, Any]) -> None:
    decoders = [
        lambda data: OpenWebUIFlavour().decode(("events:chat", data)),
        decode_chat_signal,
        ]
    for decode in decoders:
        if "error" in case:
            with pytest.raises(ProtocolError) as raised:
                decode(case["data"])
            assert case["error"] in raised.value.message
            continue
        signal = decode(case["data"])
        assert signal == ChatSignal(**case["event"])
        assert exact(dataclasses.asdict(signal)) == exact(case["event"])


def test_the_socket_refuses_other_events() -> None:
    with pytest.raises(ProtocolError, match="Unknown event 'chat:stop'"):
        OpenWebUIFlavour().decode(("chat:stop", {}))
