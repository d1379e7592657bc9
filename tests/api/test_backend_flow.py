"""Open WebUI's "Backend-Controlled, UI-Compatible API Flow" (seeds/001), step by step,
with the tutorial's own request bodies (model names swapped for the fake upstream's)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token

QUESTION = "Hi, what is the capital of France?"
FOLLOW_UP = "Can you tell me more about Paris?"


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, self.url + path, json=body, headers=self.headers
            ) as resp:
                text = await resp.text()
                try:
                    data = json.loads(text)
                except ValueError:
                    data = text
                return resp.status, data, dict(resp.headers)

    async def stream(self, body: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """POST a streaming completion and rebuild the text from its OpenAI chunks."""
        async with aiohttp.ClientSession() as session:
            async with session.post(
                self.url + "/api/chat/completions", json=body, headers=self.headers
            ) as resp:
                assert resp.status == 200, await resp.text()
                parts = []
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        assert "error" not in chunk, chunk
                        parts.append(chunk["choices"][0]["delta"].get("content") or "")
                    elif line.startswith(b"data: [DONE]"):
                        return "".join(parts), dict(resp.headers)
        raise AssertionError("stream ended without [DONE]")


def step1_body(user_id: str, assistant_id: str, model: str = "fake-model") -> dict[str, Any]:
    ts = int(time.time())
    user = {
        "id": user_id,
        "role": "user",
        "content": QUESTION,
        "timestamp": ts,
        "models": [model],
        "childrenIds": [assistant_id],
    }
    assistant = {
        "id": assistant_id,
        "role": "assistant",
        "content": "",
        "parentId": user_id,
        "childrenIds": [],
        "model": model,
        "modelName": model,
        "modelIdx": 0,
        "done": False,
        "timestamp": ts + 1,
    }
    return {
        "chat": {
            "title": "New Chat",
            "models": [model],
            "messages": [user, assistant],
            "history": {
                "currentId": assistant_id,
                "messages": {user_id: user, assistant_id: assistant},
            },
        }
    }


def step2_body(
    chat_id: str,
    assistant_id: str,
    messages: list[dict[str, str]],
    model: str = "fake-model",
    stream: bool = True,
) -> dict[str, Any]:
    return {
        "chat_id": chat_id,
        "id": assistant_id,
        "messages": messages,
        "model": model,
        "stream": stream,
        "background_tasks": {
            "title_generation": True,
            "tags_generation": False,
            "follow_up_generation": False,
        },
        "features": {
            "code_interpreter": False,
            "web_search": False,
            "image_generation": False,
            "memory": False,
        },
        "variables": {"{{USER_NAME}}": "", "{{USER_LANGUAGE}}": "en-US"},
        "session_id": str(uuid.uuid4()),
    }


@pytest.fixture
def api(gateway: GatewayProcess) -> Api:
    return Api(gateway.url, make_token(f"tutorial-{uuid.uuid4().hex[:8]}"))


async def test_tutorial_flow_streaming_then_multi_turn(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    status, created, _ = await api.call("POST", "/api/v1/chats/new", step1_body(u1, a1))
    assert status == 200
    chat_id = created["id"]
    assert created["chat"]["history"]["messages"][a1]["done"] is False

    # Step 2 (streaming) and step 3 (wait for the stream to end)
    text, headers = await api.stream(
        step2_body(chat_id, a1, [{"role": "user", "content": QUESTION}])
    )
    first = reply_text("fake-model", [{"role": "user", "content": QUESTION}])
    assert text == first
    assert "X-Gateway-Repaired" not in headers

    # Step 4: the final chat
    status, chat, _ = await api.call("GET", f"/api/v1/chats/{chat_id}")
    history = chat["chat"]["history"]
    assert history["messages"][a1]["content"] == first and history["messages"][a1]["done"] is True
    assert history["messages"][a1]["modelName"] == "fake-model"  # client fields kept
    assert chat["title"] == QUESTION  # a first turn titled "New Chat" gets a title

    # Multi-turn: the tutorial's partial update, then a completion for the new placeholder
    u2, a2 = str(uuid.uuid4()), str(uuid.uuid4())
    ts = int(time.time())
    update = {
        "chat": {
            "history": {
                "currentId": a2,
                "messages": {
                    a1: {"childrenIds": [u2]},
                    u2: {
                        "id": u2,
                        "role": "user",
                        "content": FOLLOW_UP,
                        "parentId": a1,
                        "childrenIds": [a2],
                        "timestamp": ts,
                        "models": ["fake-model"],
                    },
                    a2: {
                        "id": a2,
                        "role": "assistant",
                        "content": "",
                        "parentId": u2,
                        "childrenIds": [],
                        "model": "fake-model",
                        "modelName": "fake-model",
                        "modelIdx": 0,
                        "done": False,
                        "timestamp": ts + 1,
                    },
                },
            }
        }
    }
    status, chat, _ = await api.call("POST", f"/api/v1/chats/{chat_id}", update)
    assert status == 200
    messages = chat["chat"]["history"]["messages"]
    assert messages[a1]["content"] == first, "a partial {childrenIds} update must not wipe content"
    assert messages[a1]["childrenIds"] == [u2] and messages[u1]["childrenIds"] == [a1]
    assert [m["id"] for m in chat["chat"]["messages"]] == [u1, a1, u2, a2]

    turns = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first},
        {"role": "user", "content": FOLLOW_UP},
    ]
    text, _ = await api.stream(step2_body(chat_id, a2, turns))
    assert text == reply_text("fake-model", turns)
    # The model saw the path from the root to the new user message.
    (record,) = [
        r
        for r in fake_upstream.requests
        if FOLLOW_UP in json.dumps(r.body) and chat_id not in json.dumps(r.body)
    ][-1:]
    assert [m["content"] for m in record.body["messages"]] == [QUESTION, first, FOLLOW_UP]


async def test_tutorial_polling_variant_never_sees_half_a_reply(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    _, created, _ = await api.call(
        "POST", "/api/v1/chats/new", step1_body(u1, a1, model="fake-slow")
    )
    chat_id = created["id"]

    async def fire_and_forget() -> None:
        # A client that starts the completion and drops the connection at once:
        # the reply must still land in the chat.
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                api.url + "/api/chat/completions",
                json=step2_body(chat_id, a1, [], model="fake-slow"),
                headers=api.headers,
            )
            assert resp.status == 200
            resp.close()

    await fire_and_forget()
    seen = []
    for _ in range(200):
        _, chat, _ = await api.call("GET", f"/api/v1/chats/{chat_id}")
        message = chat["chat"]["history"]["messages"][a1]
        seen.append(message["content"])
        if message["content"]:
            break
        await asyncio.sleep(0.05)
    full = reply_text("fake-slow", []).strip()  # trimmed, as Open WebUI trims a reply
    assert message["content"] == full and message["done"] is True
    assert set(seen[:-1]) <= {""}, "pollers must see either nothing or the whole reply"


async def test_non_streaming_completion_and_missing_placeholder_is_repaired(api: Api) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    body = step1_body(u1, a1)
    del body["chat"]["history"]["messages"][a1]
    body["chat"]["messages"] = body["chat"]["messages"][:1]
    body["chat"]["history"]["currentId"] = u1
    body["chat"]["history"]["messages"][u1]["childrenIds"] = []
    _, created, _ = await api.call("POST", "/api/v1/chats/new", body)
    chat_id = created["id"]
    new_id = str(uuid.uuid4())
    status, reply, headers = await api.call(
        "POST", "/api/chat/completions", step2_body(chat_id, new_id, [], stream=False)
    )
    assert status == 200
    assert reply["object"] == "chat.completion" and reply["id"] == new_id
    assert new_id in headers["X-Gateway-Repaired"] and u1 in headers["X-Gateway-Repaired"]
    _, chat, _ = await api.call("GET", f"/api/v1/chats/{chat_id}")
    history = chat["chat"]["history"]
    assert history["messages"][new_id]["parentId"] == u1 and history["messages"][u1][
        "childrenIds"
    ] == [new_id]
    assert history["messages"][new_id]["content"] == reply["choices"][0]["message"]["content"]
    assert history["currentId"] == new_id


async def test_tutorial_pitfalls_current_id_and_missing_children(api: Api) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    body = step1_body(u1, a1)
    history = body["chat"]["history"]
    history["current_id"] = history.pop("currentId")
    for message in history["messages"].values():
        del message["childrenIds"]
    status, created, _ = await api.call("POST", "/api/v1/chats/new", body)
    assert status == 200
    history = created["chat"]["history"]
    assert history["currentId"] == a1 and "current_id" not in history
    assert history["messages"][u1]["childrenIds"] == [a1]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda h, u, a: h["messages"][a].update(parentId="nowhere"), "nowhere"),
        (lambda h, u, a: h["messages"][u].update(parentId=a), "cycle"),
    ],
)
async def test_inconsistent_tree_is_refused_naming_the_message(
    api: Api, mutate: Any, fragment: str
) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    body = step1_body(u1, a1)
    mutate(body["chat"]["history"], u1, a1)
    status, error, _ = await api.call("POST", "/api/v1/chats/new", body)
    assert status == 400
    assert fragment in error["detail"]


async def test_other_users_chat_is_404_for_completions(api: Api, gateway: GatewayProcess) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    _, created, _ = await api.call("POST", "/api/v1/chats/new", step1_body(u1, a1))
    mallory = Api(gateway.url, make_token("mallory"))
    status, error, _ = await mallory.call(
        "POST", "/api/chat/completions", step2_body(created["id"], a1, [], stream=False)
    )
    assert status == 404 and "detail" in error
    status, _, _ = await mallory.call(
        "POST", "/api/chat/completions", step2_body("no-such-chat", a1, [], stream=False)
    )
    assert status == 404


async def test_tools_offered_to_a_stored_reply_are_refused_and_nothing_is_written(
    api: Api,
) -> None:
    """Tool calling is relayed on the pure API only: a stored chat has nowhere to keep
    the calls, and answering as if no tools were offered would lose them."""
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    _, created, _ = await api.call("POST", "/api/v1/chats/new", step1_body(u1, a1))
    body = step2_body(created["id"], a1, [], stream=False)
    body["tools"] = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    status, error, _ = await api.call("POST", "/api/chat/completions", body)
    assert status == 400 and "without 'chat_id' and 'session_id'" in error["detail"], error
    _, chat, _ = await api.call("GET", f"/api/v1/chats/{created['id']}")
    assert chat["chat"]["history"]["messages"][a1]["content"] == ""


async def test_upstream_failure_is_stored_on_the_message(api: Api) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    _, created, _ = await api.call(
        "POST", "/api/v1/chats/new", step1_body(u1, a1, model="fake-dies")
    )
    chat_id = created["id"]
    async with aiohttp.ClientSession() as session:
        async with session.post(
            api.url + "/api/chat/completions",
            json=step2_body(chat_id, a1, [], model="fake-dies"),
            headers=api.headers,
        ) as resp:
            payloads = [line async for line in resp.content if line.startswith(b"data: ")]
    assert payloads[-1].strip() == b"data: [DONE]"
    assert b'"error"' in payloads[-2]
    _, chat, _ = await api.call("GET", f"/api/v1/chats/{chat_id}")
    message = chat["chat"]["history"]["messages"][a1]
    assert message["done"] is True and "broke off" in message["error"]["content"]
    assert (
        message["content"] == reply_text("fake-dies", [{"role": "user", "content": QUESTION}])[:9]
    )


async def test_sigkill_mid_reply_keeps_the_last_checkpoint(
    start_gateway: Any, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "crash"
    env = {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_CHECKPOINT_INTERVAL_S": "0.2"}
    gw = start_gateway(env, data_dir=data)
    api = Api(gw.url, make_token("crash-user"))
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    _, created, _ = await api.call(
        "POST", "/api/v1/chats/new", step1_body(u1, a1, model="fake-slow")
    )
    chat_id = created["id"]
    received = []
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            api.url + "/api/chat/completions",
            json=step2_body(chat_id, a1, [], model="fake-slow"),
            headers=api.headers,
        )
        async for line in resp.content:
            if line.startswith(b"data: {"):
                received.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
            if len(received) > 30:
                break
        gw.kill()  # SIGKILL: no shutdown handler runs
        resp.close()
    restarted = start_gateway(env, data_dir=data)
    api = Api(restarted.url, make_token("crash-user"))
    _, chat, _ = await api.call("GET", f"/api/v1/chats/{chat_id}")
    message = chat["chat"]["history"]["messages"][a1]
    full = reply_text("fake-slow", [])
    assert message["done"] is True
    assert "error" in message and "stopped" in message["error"]["content"]
    assert message["content"] and full.startswith(message["content"])
    # A checkpoint is at most 0.2 s (10 deltas at 20 ms) behind what the client saw.
    assert len(message["content"]) >= len("".join(received)) - 10 * len("w00 ") - 8


async def test_a_stale_client_update_cannot_overwrite_a_reply_being_generated(api: Api) -> None:
    u1, a1 = str(uuid.uuid4()), str(uuid.uuid4())
    body = step1_body(u1, a1, model="fake-slow")
    _, created, _ = await api.call("POST", "/api/v1/chats/new", body)
    chat_id = created["id"]
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            api.url + "/api/chat/completions",
            json=step2_body(chat_id, a1, [], model="fake-slow"),
            headers=api.headers,
        )
        # The web app re-sends its whole (stale) chat while the reply streams.
        stale = {"chat": {"title": "renamed", "history": body["chat"]["history"]}}
        status, _, _ = await api.call("POST", f"/api/v1/chats/{chat_id}", stale)
        assert status == 200
        async for _ in resp.content:
            pass
        resp.close()
    _, chat, _ = await api.call("GET", f"/api/v1/chats/{chat_id}")
    assert chat["title"] == "renamed"
    message = chat["chat"]["history"]["messages"][a1]
    stored = reply_text("fake-slow", []).strip()  # trimmed, as Open WebUI trims a reply
    assert message["content"] == stored and message["done"] is True
