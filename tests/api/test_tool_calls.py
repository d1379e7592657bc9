"""Tool calling through the OpenAI flavour, with the real `openai` package: the tools a
request offers reach the model server, the calls it makes come back (streamed and
not), and the conversation that carries their results goes on.  The fake model
server calls every offered tool with `{"question": <the user's text>}`
(`tests/fakes/upstream.py`, `tool_call_deltas`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"question": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}},
    },
]


def client(gateway: GatewayProcess, token: str, prefix: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + prefix, api_key=token, max_retries=0)


class Asked:
    """A question of its own, found again among the model server's requests."""

    def __init__(self) -> None:
        self.marker = uuid.uuid4().hex
        self.question = f"weather in Tromsø? {self.marker}"
        self.messages: list[Any] = [{"role": "user", "content": self.question}]

    def sent(self, upstream: FakeUpstream) -> list[dict[str, Any]]:
        return [record.body for record in upstream.requests_for(self.marker)]


# The gateway's own route, and Open WebUI's pure-API one (`/api/chat/completions`
# without a chat), which answers the same way.
PREFIXES = ["/v1", "/api"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_streamed_tool_calls_reach_the_sdk_whole(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, alice_token: str, prefix: str
) -> None:
    ask = Asked()
    question, messages = ask.question, ask.messages
    sdk = client(gateway, alice_token, prefix)
    with sdk.chat.completions.stream(
        model="fake-model",
        messages=messages,
        tools=TOOLS,
        stream_options={"include_usage": True},
    ) as stream:
        pieces = [event for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None
    assert [(call.id, call.type, call.function.name) for call in calls] == [
        ("call_fake0", "function", "weather"),
        ("call_fake1", "function", "clock"),
    ]
    assert [json.loads(call.function.arguments) for call in calls] == [{"question": question}] * 2
    # What else the server put on a call comes with it (Gemini's thought signature).
    assert [(call.model_extra or {}).get("extra_content") for call in calls] == [
        {"google": {"thought_signature": "sig0"}},
        {"google": {"thought_signature": "sig1"}},
    ]
    # Streamed as it came: the arguments in many pieces, not one.
    assert len(pieces) > 4
    assert choice.message.content in (None, "")
    assert final.usage is not None and final.usage.total_tokens == 33
    # The model server was offered the tools as the client wrote them.
    (sent,) = ask.sent(fake_upstream)
    assert sent["tools"] == TOOLS


@pytest.mark.parametrize("prefix", PREFIXES)
def test_an_agent_loop_with_the_sdk(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, alice_token: str, prefix: str
) -> None:
    """Not streamed: the calls in the message, then their results sent back, then the
    model's answer; each request reaches the model server as the client wrote it."""
    ask = Asked()
    question, messages = ask.question, ask.messages
    sdk = client(gateway, alice_token, prefix)
    first = sdk.chat.completions.create(
        model="fake-model",
        messages=messages,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert message.content is None  # only calls: null, as OpenAI's
    assert message.tool_calls is not None
    (call,) = message.tool_calls  # tool_choice named one tool
    assert (call.id, call.function.name) == ("call_fake0", "weather")
    assert json.loads(call.function.arguments) == {"question": question}

    result = "12 °C, snow"
    messages = [
        *messages,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    second = sdk.chat.completions.create(model="fake-model", messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content == reply_text("fake-model", messages)
    assert second.choices[0].message.content.startswith("Fake reply to tool result: 12 °C")

    first_sent, second_sent = ask.sent(fake_upstream)
    assert first_sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert second_sent["messages"][1] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_fake0",
                "type": "function",
                "function": {"name": "weather", "arguments": call.function.arguments},
                "extra_content": {"google": {"thought_signature": "sig0"}},
            }
        ],
    }
    assert second_sent["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_fake0",
        "content": result,
    }


def test_parallel_tool_calls_false_reaches_the_model_server(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, alice_token: str
) -> None:
    ask = Asked()
    sdk = client(gateway, alice_token, "/v1")
    reply = sdk.chat.completions.create(
        model="fake-model", messages=ask.messages, tools=TOOLS, parallel_tool_calls=False
    )
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and [call.function.name for call in calls] == ["weather"]
    assert ask.sent(fake_upstream)[0]["parallel_tool_calls"] is False


def test_a_reply_without_tools_offered_has_no_tool_calls(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, alice_token: str
) -> None:
    ask = Asked()
    sdk = client(gateway, alice_token, "/v1")
    reply = sdk.chat.completions.create(model="fake-model", messages=ask.messages)
    message = reply.choices[0].message
    assert message.tool_calls is None
    assert message.content == reply_text("fake-model", ask.messages)
    assert "tools" not in ask.sent(fake_upstream)[0]


def test_deprecated_functions_are_refused_with_their_replacement_named(
    gateway: GatewayProcess, alice_token: str
) -> None:
    messages = Asked().messages
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateway, alice_token, "/v1").chat.completions.create(
            model="fake-model", messages=messages, functions=[TOOLS[0]["function"]]
        )
    error = refused.value.body
    assert isinstance(error, dict)
    assert "deprecated" in error["message"] and "'tools'" in error["message"]


def test_a_reply_of_calls_alone_is_counted_when_the_server_reports_no_usage(
    gateway: GatewayProcess, alice_token: str
) -> None:
    """Usage is estimated from what the model wrote: its calls' arguments too."""
    reply = client(gateway, alice_token, "/v1").chat.completions.create(
        model="fake-nousage", messages=Asked().messages, tools=TOOLS
    )
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 2
    written = sum(len(call.function.arguments) for call in calls)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == (written + 3) // 4 > 0
