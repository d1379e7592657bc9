"""The chat API as Open WebUI's own behaviour has it (issue 15), against a real gateway:

* a reply id naming a message of another branch is refused (409), nothing changed;
* an assistant turn that failed or is empty is not sent back to the model;
* reasoning (`<think>` tags, a provider's `reasoning_content`) is stored apart from
  the answer, as Open WebUI 0.12.4 stores it (`output` items), and streamed so the
  web app shows it while it comes;
* a reply is trimmed as Open WebUI trims it; content sent as a list of parts, or
  with a NUL in it, is read;
* `/api/chat/completed` answers for unsaved (`local:`, `temporary:`) chats;
* a message edited over REST reaches the owner's tabs as `chat:message`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.clients import PySocket, completion_of, ended, get_json, post_json, turn_body
from tests.fakes.upstream import THINKING, FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token


@pytest.fixture
def token() -> str:
    return make_token(f"integrity-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def sock(gateway: GatewayProcess, token: str) -> AsyncIterator[PySocket]:
    socket = await PySocket().connect(gateway.url, token)
    yield socket
    await socket.close()


async def raw_chat(gateway: GatewayProcess, token: str, chat_id: str) -> str:
    """The chat exactly as stored and served (the JSON text of its GET)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/api/v1/chats/{chat_id}", headers=headers) as resp:
            assert resp.status == 200
            return await resp.text()


async def turn(
    gateway: GatewayProcess, token: str, sock: PySocket, content: str, **kwargs: Any
) -> tuple[str, str, str]:
    """One web-app turn, run to its end: (chat id, user message id, reply id)."""
    body = turn_body(sock.sid, content, **kwargs)
    before = sum(map(ended, sock.events))
    answer = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    await sock.wait_ended(before + 1)
    return answer["chat_id"], body["user_message"]["id"], body["id"]


# -- 1. a reply id of another branch ----------------------------------------------------
async def test_a_new_turn_into_a_message_of_another_branch_is_refused(
    gateway: GatewayProcess, token: str, sock: PySocket
) -> None:
    chat_id, _, a1 = await turn(gateway, token, sock, "first question")
    _, u2, a2 = await turn(gateway, token, sock, "second question", chat_id=chat_id, parent_id=a1)
    before = await raw_chat(gateway, token, chat_id)
    assert json.loads(before)["chat"]["history"]["messages"][a1]["content"]

    # A new user message under a2 whose reply id names a1 (the first turn's answer).
    body = turn_body(sock.sid, "third question", chat_id=chat_id, parent_id=a2, assistant_id=a1)
    refused = await post_json(f"{gateway.url}/api/chat/completions", token, body, expect=409)
    assert "another branch" in refused["detail"]
    # The same with a known user message (a regenerate) whose reply id is u1's answer.
    body = turn_body(
        sock.sid,
        "second question",
        chat_id=chat_id,
        parent_id=a1,
        user_message_id=u2,
        assistant_id=a1,
    )
    await post_json(f"{gateway.url}/api/chat/completions", token, body, expect=409)
    # Backend-controlled: the current path ends at a2; a1 is an answer elsewhere.
    body = {"chat_id": chat_id, "id": a1, "model": "fake-model", "stream": False}
    await post_json(f"{gateway.url}/api/chat/completions", token, body, expect=409)
    body["parent_id"] = u2
    await post_json(f"{gateway.url}/api/chat/completions", token, body, expect=409)

    assert await raw_chat(gateway, token, chat_id) == before, "a refused turn changes nothing"


async def test_answering_the_same_placeholder_again_still_works(
    gateway: GatewayProcess, token: str, sock: PySocket
) -> None:
    chat_id, u1, a1 = await turn(gateway, token, sock, "again?")
    # Backend-controlled, into the chat's current message: answered again.
    body = {"chat_id": chat_id, "id": a1, "model": "fake-model", "stream": False}
    reply = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    assert reply["choices"][0]["message"]["content"] == "Fake reply to: again?"
    # Frontend mode, into the message that answers the same question.
    body = turn_body(sock.sid, "again?", chat_id=chat_id, user_message_id=u1, assistant_id=a1)
    await post_json(f"{gateway.url}/api/chat/completions", token, body)
    await sock.wait_ended(2)


async def test_one_reply_at_a_time_into_a_message(
    gateway: GatewayProcess, token: str, sock: PySocket
) -> None:
    """Two replies asked at once into one message: one runs, the other is refused
    (409, in Open WebUI's error shape), in either mode; the stored answer is the
    one that ran, whole; once it has ended the message is answered again."""
    chat_id, u1, a1 = await turn(gateway, token, sock, "one at a time")
    url = f"{gateway.url}/api/chat/completions"
    slow = {"chat_id": chat_id, "id": a1, "model": "fake-slow", "stream": False}
    quick = {**slow, "model": "fake-model"}

    async def status_of(body: dict[str, Any]) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=body, headers=headers) as resp:
                return resp.status, await resp.json()

    first, second = await asyncio.gather(status_of(slow), status_of(quick))
    statuses = sorted([first[0], second[0]])
    assert statuses == [200, 409], (first, second)
    ran, refused = (first, second) if first[0] == 200 else (second, first)
    assert "already running" in refused[1]["detail"]
    answer = ran[1]["choices"][0]["message"]["content"]
    stored = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    assert stored["chat"]["history"]["messages"][a1]["content"] == answer

    # Frontend mode (the web app's "continue") while a backend-controlled reply runs.
    running = asyncio.ensure_future(status_of(slow))
    await asyncio.sleep(0.3)  # fake-slow's 64 deltas take 1.3 s
    body = turn_body(
        sock.sid, "one at a time", chat_id=chat_id, user_message_id=u1, assistant_id=a1
    )
    refused_turn = await post_json(url, token, body, expect=409)
    assert "already running" in refused_turn["detail"]
    assert (await running)[0] == 200
    assert (await status_of(quick))[0] == 200  # free again


async def test_a_reply_whose_model_server_has_not_answered_can_be_stopped(
    gateway: GatewayProcess, token: str, sock: PySocket, fake_upstream: FakeUpstream
) -> None:
    """Backend-controlled, into a model server still loading its model (no response
    headers for 30 s): the reply is in the chat's task list, a stop ends it at
    once, stored as stopped; the request that asked is answered with the stopped
    reply, and the model server's request is closed."""
    marker = f"a model still loading {uuid.uuid4().hex}"
    chat_id, _, a1 = await turn(gateway, token, sock, marker)
    url = f"{gateway.url}/api/chat/completions"
    body = {"chat_id": chat_id, "id": a1, "model": "fake-loading", "stream": False}
    asking = asyncio.ensure_future(post_json(url, token, body))
    tasks_url = f"{gateway.url}/api/tasks/chat/{chat_id}"
    for _ in range(200):
        listed = await get_json(tasks_url, token)
        if listed["task_ids"] and len(fake_upstream.requests_for(marker)) == 2:
            break
        await asyncio.sleep(0.025)
    assert listed["task_ids"], "the reply was not listed while its model server loaded"
    [task_id] = listed["task_ids"]
    assert not asking.done()  # the model server has not answered
    stopped = await post_json(f"{gateway.url}/api/tasks/stop/{task_id}", token, None)
    assert stopped["status"] is True
    answer = await asyncio.wait_for(asking, 5)
    assert answer["choices"][0]["message"]["content"] == ""
    stored = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    reply = stored["chat"]["history"]["messages"][a1]
    assert reply["done"] is True and reply["content"] == "" and reply["model"] == "fake-loading"
    assert (await get_json(tasks_url, token))["task_ids"] == []
    loading = fake_upstream.requests_for(marker)[-1]
    assert await asyncio.to_thread(loading.ended.wait, 5)
    assert loading.disconnected and loading.body["model"] == "fake-loading"


# -- 3. failed and empty answers are not replayed ------------------------------------------
async def test_a_failed_answer_is_not_sent_back_to_the_model(
    gateway: GatewayProcess, token: str, sock: PySocket, fake_upstream: FakeUpstream
) -> None:
    chat_id, _, a1 = await turn(gateway, token, sock, "this one fails", model="fake-error")
    stored = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    assert stored["chat"]["history"]["messages"][a1]["content"] == ""
    marker = f"after the failure {uuid.uuid4().hex}"
    await turn(gateway, token, sock, marker, chat_id=chat_id, parent_id=a1)
    (request,) = fake_upstream.requests_for(marker)
    sent = request.body["messages"]
    assert {"role": "assistant", "content": ""} not in sent
    assert [m["role"] for m in sent] == ["user", "user"]
    assert [m["content"] for m in sent] == ["this one fails", marker]


# -- 4 and 5. reasoning apart; the answer trimmed; parts and NUL read ----------------------
def items_of(events: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in events
        if e["message_id"] == message_id and e["type"] == "response:completion"
    ]


async def test_think_tags_are_reasoning_streamed_and_stored_as_open_webui_does(
    gateway: GatewayProcess, token: str, sock: PySocket
) -> None:
    chat_id, _, a1 = await turn(gateway, token, sock, "why?", model="fake-think")
    answer = "Fake reply to: why?"
    events = sock.events
    # While streaming: the reasoning item (index 0), its end, then the answer (index 1).
    live = items_of(events, a1)
    reasoning = [d for d in live if d["type"] == "response.reasoning_text.delta"]
    assert "".join(d["delta"] for d in reasoning) == THINKING
    assert {(d["output_index"], d["content_index"]) for d in reasoning} == {(0, 0)}
    (done,) = [d for d in live if d["type"] == "response.output_item.done"]
    assert done["output_index"] == 0 and done["item"]["status"] == "completed"
    assert done["item"]["content"] == [{"type": "output_text", "text": THINKING}]
    assert isinstance(done["item"]["duration"], int)
    text = [d for d in live if d["type"] == "response.output_text.delta"]
    assert "".join(d["delta"] for d in text).strip() == answer
    assert {d["output_index"] for d in text} == {1}
    assert live.index(done) < live.index(text[0])
    assert not [e for e in events if e["type"] == "chat:message:delta" and e["message_id"] == a1]
    # The end, and the stored message: the answer alone in content, the reasoning in output.
    completion = completion_of(events, a1)
    stored = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    message = stored["chat"]["history"]["messages"][a1]
    for shown in (completion, message):
        assert shown["content"] == answer
        kinds = [item["type"] for item in shown["output"]]
        assert kinds == ["reasoning", "message"]
        assert shown["output"][0]["content"][0]["text"] == THINKING
        assert shown["output"][0]["status"] == "completed"
        assert isinstance(shown["output"][0]["duration"], int)
        assert shown["output"][1]["content"] == [{"type": "output_text", "text": answer}]
    texts = [part["text"] for item in message["output"] for part in item["content"]]
    assert not [text for text in [*texts, message["content"]] if "think>" in text]


async def test_a_providers_reasoning_content_is_stored(
    gateway: GatewayProcess, token: str, sock: PySocket
) -> None:
    chat_id, _, a1 = await turn(gateway, token, sock, "deep", model="fake-reasoner")
    stored = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    message = stored["chat"]["history"]["messages"][a1]
    assert message["content"] == "Fake reply to: deep"
    reasoning = message["output"][0]
    assert reasoning["type"] == "reasoning"
    assert reasoning["attributes"] == {"type": "reasoning_content"}
    assert reasoning["content"] == [{"type": "output_text", "text": "Let me think."}]


@pytest.mark.parametrize(
    ("model", "answer"),
    [
        ("fake-parts", "Fake reply to: {q}"),  # content as [{"type": "text", "text"}]
        ("fake-nul", "Fake reply to: {q}!"),  # a NUL in the text
        ("fake-think", "Fake reply to: {q}"),  # blank lines around the answer
    ],
)
async def test_the_stored_answer_is_the_text_trimmed(
    gateway: GatewayProcess, token: str, sock: PySocket, model: str, answer: str
) -> None:
    question = f"q {uuid.uuid4().hex[:6]}"
    chat_id, _, a1 = await turn(gateway, token, sock, question, model=model)
    stored = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    assert stored["chat"]["history"]["messages"][a1]["content"] == answer.format(q=question)
    assert completion_of(sock.events, a1)["content"] == answer.format(q=question)


async def test_backend_controlled_reply_is_trimmed_and_without_reasoning(
    gateway: GatewayProcess, token: str
) -> None:
    step1 = {
        "chat": {
            "title": "t",
            "history": {
                "currentId": "a1",
                "messages": {
                    "u1": {"id": "u1", "role": "user", "content": "hm", "childrenIds": ["a1"]},
                    "a1": {"id": "a1", "parentId": "u1", "role": "assistant", "content": ""},
                },
            },
        }
    }
    chat = await post_json(f"{gateway.url}/api/v1/chats/new", token, step1)
    body = {"chat_id": chat["id"], "id": "a1", "model": "fake-think", "stream": False}
    reply = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    assert reply["choices"][0]["message"]["content"] == "Fake reply to: hm"
    stored = await get_json(f"{gateway.url}/api/v1/chats/{chat['id']}", token)
    assert stored["chat"]["history"]["messages"]["a1"]["content"] == "Fake reply to: hm"


async def test_pure_api_replies_are_passed_through(gateway: GatewayProcess, token: str) -> None:
    body = {"model": "fake-think", "messages": [{"role": "user", "content": "raw"}]}
    reply = await post_json(f"{gateway.url}/v1/chat/completions", token, body)
    text = reply_text("fake-think", body["messages"])
    assert reply["choices"][0]["message"]["content"] == text  # tags and all, as sent


# -- 6. /api/chat/completed for unsaved chats ------------------------------------------------
@pytest.mark.parametrize("prefix", ["local:", "temporary:"])
async def test_chat_completed_answers_for_unsaved_chats(
    gateway: GatewayProcess, token: str, prefix: str
) -> None:
    body = {
        "model": "fake-model",
        "messages": [{"id": "m1", "role": "user", "content": "hi"}],
        "chat_id": f"{prefix}{uuid.uuid4().hex}",
        "session_id": "s1",
        "id": "m2",
    }
    for path in ("/api/chat/completed", "/api/v1/chat/completed"):
        assert await post_json(f"{gateway.url}{path}", token, body) == body


# -- 7. REST edits reach the other tabs ------------------------------------------------------
async def test_a_message_edited_over_rest_reaches_every_tab(
    gateway: GatewayProcess, token: str, sock: PySocket
) -> None:
    chat_id, u1, a1 = await turn(gateway, token, sock, "edit me")
    other = await PySocket().connect(gateway.url, token)
    try:
        url = f"{gateway.url}/api/v1/chats/{chat_id}"
        await post_json(f"{url}/messages/{a1}", token, {"content": "edited answer"})
        update = {"chat": {"history": {"messages": {u1: {"content": "edited question"}}}}}
        await post_json(url, token, update)
        expected = [
            (a1, {"chat_id": chat_id, "message_id": a1, "content": "edited answer"}),
            (u1, {"chat_id": chat_id, "message_id": u1, "content": "edited question"}),
        ]
        for tab in (other, sock):
            await tab.wait_until(
                lambda events: len([e for e in events if e["type"] == "chat:message"]) >= 2
            )
            got = [(e["message_id"], e["data"]) for e in tab.events if e["type"] == "chat:message"]
            assert got == expected
            assert all(e["chat_id"] == chat_id for e in tab.events if e["type"] == "chat:message")
        # An update that changes no text says nothing.
        await post_json(url, token, {"chat": {"title": "renamed"}})
        stored = await get_json(url, token)
        assert stored["chat"]["history"]["messages"][a1]["content"] == "edited answer"
    finally:
        await other.close()
    assert len([e for e in sock.events if e["type"] == "chat:message"]) == 2
