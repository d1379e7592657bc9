"""The web app's background tasks: with each turn it asks for a title the model
writes, tags and follow-up questions (`background_tasks`); each arrives as the
event Open WebUI sends and is stored where Open WebUI keeps it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.clients import PySocket, get_json, post_json, turn_body
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

ALL_TASKS = {"title_generation": True, "tags_generation": True, "follow_up_generation": True}


def user() -> tuple[str, str]:
    user_id = f"bg-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id)


async def turn_with(
    gateway: GatewayProcess, token: str, sock: PySocket, question: str, model: str, tasks: Any
) -> dict[str, Any]:
    body = turn_body(sock.sid, question, model=model)
    body["background_tasks"] = tasks
    answer: dict[str, Any] = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    return answer


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


async def test_title_tags_and_follow_ups_arrive_and_are_stored(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        answer = await turn_with(
            gateway, token, sock, "How do tides work?", "fake-model", ALL_TASKS
        )
        events = await sock.wait_until(
            lambda seen: all(
                of_type(seen, kind)
                for kind in ("chat:title", "chat:tags", "chat:message:follow_ups")
            )
        )
    finally:
        await sock.close()
    chat_id = answer["chat_id"]
    # The events, as Open WebUI sends them: a title string, a list of tag names,
    # {"follow_ups": [...]} about the reply's message.
    assert [e["data"] for e in of_type(events, "chat:title")] == ["🧪 Fake title"]
    assert of_type(events, "chat:tags")[0]["data"] == ["Testing", "Fakes"]
    follow_ups = of_type(events, "chat:message:follow_ups")[0]
    assert follow_ups["data"] == {"follow_ups": ["Tell me more", "Why?"]}
    reply_id = body_reply_id(events)
    assert follow_ups["message_id"] == reply_id and follow_ups["chat_id"] == chat_id
    # The reply's own completion carried no provisional title to flicker first.
    completion = of_type(events, "chat:completion")[-1]
    assert "title" not in completion["data"]
    # Stored: the chat's title and tags, the reply's followUps.
    chat = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    assert chat["title"] == "🧪 Fake title"
    assert chat["chat"]["history"]["messages"][reply_id]["followUps"] == ["Tell me more", "Why?"]
    tags = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}/tags", token)
    assert sorted(tag["name"] for tag in tags) == ["Fakes", "Testing"]
    # The model saw the conversation it titles (the question and the answer).
    asked = fake_upstream.requests_for("Task: title")
    assert asked and "How do tides work?" in str(asked[-1].body["messages"])


def body_reply_id(events: list[dict[str, Any]]) -> str:
    return str(of_type(events, "chat:active")[0]["message_id"])


async def test_a_model_that_gives_no_title_leaves_the_questions_first_words(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        # fake-slow answers every prompt with words, never JSON.
        answer = await turn_with(
            gateway, token, sock, "Plan a trip to Lisbon", "fake-slow", ALL_TASKS
        )
        events = await sock.wait_until(lambda seen: bool(of_type(seen, "chat:title")))
    finally:
        await sock.close()
    assert of_type(events, "chat:title")[0]["data"] == "Plan a trip to Lisbon"
    chat = await get_json(f"{gateway.url}/api/v1/chats/{answer['chat_id']}", token)
    assert chat["title"] == "Plan a trip to Lisbon"
    assert not of_type(events, "chat:tags") and not of_type(events, "chat:message:follow_ups")


@pytest.mark.parametrize("tasks", [None, {}, {"title_generation": False}])
async def test_without_title_generation_the_title_is_the_first_words_at_once(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, tasks: Any
) -> None:
    _, token = user()
    marker = f"no tasks {uuid.uuid4().hex[:6]}"
    sock = await PySocket().connect(gateway.url, token)
    try:
        answer = await turn_with(gateway, token, sock, marker, "fake-model", tasks)
        events = await sock.wait_ended()
    finally:
        await sock.close()
    assert of_type(events, "chat:completion")[-1]["data"]["title"] == marker
    chat = await get_json(f"{gateway.url}/api/v1/chats/{answer['chat_id']}", token)
    assert chat["title"] == marker
    # No title task was asked about this chat.
    assert all(marker not in str(r.body) for r in fake_upstream.requests_for("Task: title"))


async def test_a_chat_with_a_title_of_its_own_keeps_it(gateway: GatewayProcess) -> None:
    _, token = user()
    created = await post_json(
        f"{gateway.url}/api/v1/chats/new",
        token,
        {"chat": {"title": "My own title", "history": {"messages": {}, "currentId": None}}},
    )
    sock = await PySocket().connect(gateway.url, token)
    try:
        body = turn_body(sock.sid, "hello", model="fake-model", chat_id=created["id"])
        body["background_tasks"] = ALL_TASKS
        await post_json(f"{gateway.url}/api/chat/completions", token, body)
        await sock.wait_until(lambda seen: bool(of_type(seen, "chat:tags")))
        events = sock.events
    finally:
        await sock.close()
    assert not of_type(events, "chat:title")
    chat = await get_json(f"{gateway.url}/api/v1/chats/{created['id']}", token)
    assert chat["title"] == "My own title"


async def test_the_demo_model_answers_the_tasks_too(start_gateway: Any) -> None:
    gateway = start_gateway()
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    try:
        await turn_with(gateway, token, sock, "What is a gateway?", "gateway-demo", ALL_TASKS)
        events = await sock.wait_until(
            lambda seen: bool(
                of_type(seen, "chat:title") and of_type(seen, "chat:message:follow_ups")
            )
        )
    finally:
        await sock.close()
    assert of_type(events, "chat:title")[0]["data"] == "💬 What is a gateway?"
