"""The one codec contract (`gateway/flavours/base.py`), kept by every flavour; the event
and command registries derived from their unions; the compact JSON written once.

The frames themselves are the golden vectors' business (`test_*_vectors.py`); here:
the shape of the contract, and what each flavour's `encoder(request)` makes of it.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest

from gateway import jsonwire
from gateway.bus import wire
from gateway.commands import (
    COMMAND_TYPES,
    Ask,
    Authenticate,
    ChatSignal,
    Command,
    Ping,
    Question,
    Say,
)
from gateway.errors import ProtocolError
from gateway.events import EVENT_TYPES, Event, ReplyFinished, ReplyStarted, TextDelta, Usage
from gateway.flavours import Encoder, Flavour, nadoo, openai, openwebui, ragflow
from gateway.flavours.sse import SSEParser

NOW = 1700000000.75


def every_flavour() -> list[tuple[Flavour[Any, Any], Any, Command]]:
    """(flavour, a frame it accepts, the command that frame is)."""
    return [
        (
            nadoo.NadooFlavour("chat", "conn-a", clock=lambda: NOW),
            '{"type":"chat","content":"Hi","chat_id":"c1"}',
            Say("Hi", "c1"),
        ),
        (nadoo.NadooFlavour("workspace", clock=lambda: NOW), '{"type":"ping"}', Ping()),
        (nadoo.NadooFlavour("notifications", clock=lambda: NOW), '{"type":"ping"}', Ping()),
        (
            ragflow.RagflowSocketFlavour("cumulative"),
            '{"type":"chat","chat_id":"as1","question":"Hi"}',
            Question("as1", "Hi"),
        ),
        (
            ragflow.RagflowHttpFlavour("as1", "cumulative"),
            {"question": "Hi", "session_id": "s1", "answer_mode": "delta"},
            Question("as1", "Hi", "s1", True, "delta"),
        ),
        (
            openwebui.OpenWebUIFlavour(),
            ("user-join", {"auth": {"token": "t0k"}}),
            Authenticate("t0k"),
        ),
        (
            openwebui.OpenWebUIFlavour(),
            ("events:chat", {"chat_id": "c1", "data": {"type": "join"}}),
            ChatSignal("c1", "join"),
        ),
        (
            openai.OpenAIFlavour(clock=lambda: NOW),
            {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
            Ask("m", [{"role": "user", "content": "Hi"}], stream=False),
        ),
    ]


CASES = every_flavour()
IDS = [f"{type(flavour).__name__}-{type(command).__name__}" for flavour, _, command in CASES]


@pytest.mark.parametrize(("flavour", "frame", "command"), CASES, ids=IDS)
def test_every_flavour_decodes_into_commands(
    flavour: Flavour[Any, Any], frame: Any, command: Command
) -> None:
    assert isinstance(flavour, Flavour)
    decoded = flavour.decode(frame)
    assert decoded == command
    assert type(decoded) in typing.get_args(Command)


@pytest.mark.parametrize(("flavour", "frame", "command"), CASES, ids=IDS)
def test_every_flavour_makes_a_new_encoder_each_time(
    flavour: Flavour[Any, Any], frame: Any, command: Command
) -> None:
    # Encoders keep a connection's state: two connections never share one.
    first, second = flavour.encoder(), flavour.encoder(command)
    assert isinstance(first, Encoder) and isinstance(second, Encoder)
    assert first is not second


@pytest.mark.parametrize(
    ("flavour", "frame"),
    [
        (nadoo.NadooFlavour("chat", clock=lambda: NOW), "not json"),
        (ragflow.RagflowSocketFlavour("delta"), "not json"),
        (ragflow.RagflowHttpFlavour("as1", "delta"), {"question": ""}),
    ],
    ids=["nadoo", "ragflow-socket", "ragflow-http"],
)
def test_a_socket_flavours_errors_carry_the_frame_to_send_back(
    flavour: Flavour[Any, Any], frame: Any
) -> None:
    with pytest.raises(ProtocolError) as raised:
        flavour.decode(frame)
    sent = raised.value.frame
    assert isinstance(sent, str) and json.loads(sent)["message"] == raised.value.message


def test_the_frame_types_are_the_documented_ones() -> None:
    # The table in flavours/base.py, checked by mypy (run it on this file); at run
    # time only that each is a Flavour.
    flavours: list[Flavour[Any, Any]] = []
    nadoo_socket: Flavour[str, str] = nadoo.NadooFlavour("chat")
    ragflow_socket: Flavour[str, str] = ragflow.RagflowSocketFlavour("delta")
    ragflow_http: Flavour[Any, str] = ragflow.RagflowHttpFlavour("as1", "delta")
    web_app: Flavour[openwebui.SocketEvent, openwebui.Frame] = openwebui.OpenWebUIFlavour()
    api: Flavour[Any, bytes] = openai.OpenAIFlavour()
    flavours += [nadoo_socket, ragflow_socket, ragflow_http, web_app, api]
    assert all(isinstance(flavour, Flavour) for flavour in flavours)


REPLY: list[Event] = [
    ReplyStarted(None, "chatcmpl-1", 0, "alice", None, "served-model", NOW),
    TextDelta(None, "chatcmpl-1", 1, "Hi"),
    ReplyFinished(None, "chatcmpl-1", 2, "Hi", Usage(3, 1), "stop", 0.5),
]


def openai_chunks(encoder: Encoder[bytes]) -> list[Any]:
    frames = b"".join(frame for event in REPLY for frame in encoder.encode(event))
    return [
        json.loads(payload) for payload in SSEParser().feed(frames) if payload != "[DONE]"
    ]


def test_openai_encoder_follows_the_request() -> None:
    flavour = openai.OpenAIFlavour(space=False, clock=lambda: NOW)
    ask = flavour.decode(
        {
            "model": "asked-model",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    chunks = openai_chunks(flavour.encoder(ask))
    assert {chunk["model"] for chunk in chunks} == {"asked-model"}
    assert {chunk["created"] for chunk in chunks} == {int(NOW)}
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    frames = [frame for event in REPLY for frame in flavour.encoder(ask).encode(event)]
    assert all(frame.startswith(b"data:{") or frame == b"data:[DONE]\n\n" for frame in frames)


def test_openai_encoder_without_a_request_names_the_replying_model() -> None:
    chunks = openai_chunks(openai.OpenAIFlavour(clock=lambda: NOW).encoder())
    assert {chunk["model"] for chunk in chunks} == {"served-model"}
    assert all(chunk["choices"] for chunk in chunks)  # no usage chunk


def test_ragflow_http_encoder_takes_the_questions_own_mode() -> None:
    events: list[Event] = [
        TextDelta("s1", "a1", 1, "A"),
        TextDelta("s1", "a1", 2, "B"),
    ]

    def answers(encoder: ragflow.AnswerEncoder) -> list[str]:
        return [
            json.loads(text)["data"]["answer"] for e in events for text in encoder.encode(e)
        ]

    flavour = ragflow.RagflowHttpFlavour("as1", "cumulative")
    assert answers(flavour.encoder()) == ["A", "AB"]
    assert answers(flavour.encoder(Question("as1", "q", answer_mode="delta"))) == ["A", "B"]
    assert answers(flavour.encoder(Question("as1", "q"))) == ["A", "AB"]


# -- registries ---------------------------------------------------------------------
def test_the_event_registry_is_the_union() -> None:
    assert set(EVENT_TYPES.values()) == set(typing.get_args(Event))
    assert all(name == cls.__name__ for name, cls in EVENT_TYPES.items())
    assert "ChatTitleChanged" not in EVENT_TYPES  # retired: ReplyFinished.title carries titles


def test_the_bus_knows_every_event_by_the_same_registry() -> None:
    assert wire._TYPES == EVENT_TYPES


def test_the_command_registry_is_the_union() -> None:
    assert set(COMMAND_TYPES.values()) == set(typing.get_args(Command))
    assert {"Question", "Authenticate", "ChatSignal"} <= set(COMMAND_TYPES)


# -- compact JSON -------------------------------------------------------------------
def test_compact_json_is_written_once() -> None:
    value = {"a": [1, {"b": None}], "é": "中 ✓ \u2028", "q": '"\\'}
    text = '{"a":[1,{"b":null}],"é":"中 ✓ \u2028","q":"\\"\\\\"}'
    assert jsonwire.dumps(value) == text
    # The codecs and the bus write with it.
    assert wire._dumps(value) == text
    assert ragflow.chunk("✓", "a1", "s1").startswith('{"code":0,"message":"","data":{"answer":"✓"')
