"""A chat past `OFF_LOOP_MESSAGES` messages: its rows are made records, shaped as the
web app's tree and its turn planned in a thread, so that the event loop gets its
turns meanwhile (what that is worth is measured by `python -m bench.bench_body
--turns`, not timed here).  These tests hold the thread's results to what the loop
gave before: the same records, the same tree, and every way a long chat is read
answers as it did.

    the mechanism      `tree_work` and `records_of` run their work in another
                       thread past their bound, on the loop's thread up to it, and
                       give what the work gives
    a Nadoo turn       in a chat of OFF_LOOP_MESSAGES + 1 messages: the reply
                       streams, the model is sent the whole path (every message,
                       in order, then the question), the turn is stored
    a web app turn     the same, over Socket.IO and `/api/chat/completions`
    reads              the chat (twice at once), a fork of it up to a message and
                       the web app's search answer from every message
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import websockets

from gateway.chat.chats import OFF_LOOP_MESSAGES, tree_work
from gateway.store.sql.messages import MESSAGE_COLUMNS, OFF_LOOP_ROWS, messages_of, records_of
from tests.api.test_nadoo_ws import recv, ws_url
from tests.clients import PySocket, get_json, post_json, text_of, turn_body
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token

LONG = OFF_LOOP_MESSAGES + 1


# -- the mechanism -------------------------------------------------------------------
async def test_tree_work_runs_past_its_bound_in_another_thread() -> None:
    loop_thread = threading.get_ident()
    assert await tree_work(OFF_LOOP_MESSAGES, threading.get_ident) == loop_thread
    assert await tree_work(OFF_LOOP_MESSAGES + 1, threading.get_ident) != loop_thread
    assert await tree_work(OFF_LOOP_MESSAGES + 1, sorted, [3, 1, 2]) == [1, 2, 3]


async def test_long_chats_at_once_share_one_thread_of_their_own() -> None:
    """Not the loop's default executor (aiohttp's host-name lookups), and not a thread
    each: threads of pure Python would take the interpreter from the loop in turn."""

    def held() -> tuple[int, str]:
        time.sleep(0.05)
        return threading.get_ident(), threading.current_thread().name

    ran = await asyncio.gather(*(tree_work(LONG, held) for _ in range(4)))
    assert len(set(ran)) == 1 and ran[0][1].startswith("gateway-offloop"), ran


async def test_records_of_gives_what_messages_of_gives_on_either_side_of_its_bound() -> None:
    assert MESSAGE_COLUMNS.split(", ")[6] == "fields"
    for size in (OFF_LOOP_ROWS, OFF_LOOP_ROWS + 1):
        rows = [
            (
                "chat",
                f"m{i}",
                f"m{i - 1}" if i else None,
                "user",
                f"text {i}",
                None,
                '{"n": 1}',
                "",
                i,
            )
            for i in range(size)
        ]
        records = await records_of(rows)
        assert records == messages_of(rows)
        assert len(records) == size and records[-1].fields == {"n": 1}


# -- a long chat, made over REST --------------------------------------------------------
def linear_history(size: int) -> tuple[dict[str, Any], list[str]]:
    """A chat of `size` messages, each the answer of the one before (user, assistant,
    …), as the web app saves one; and the messages' texts, root first."""
    messages: dict[str, dict[str, Any]] = {}
    texts, parent = [], None
    for i in range(size):
        mid = f"m{i}"
        text = f"message {i}"
        messages[mid] = {
            "id": mid,
            "parentId": parent,
            "childrenIds": [f"m{i + 1}"] if i + 1 < size else [],
            "role": "user" if i % 2 == 0 else "assistant",
            "content": text,
            "timestamp": 1_700_000_000 + i,
        }
        texts.append(text)
        parent = mid
    return {"messages": messages, "currentId": parent}, texts


async def long_chat(gateway: GatewayProcess, token: str) -> tuple[str, list[str]]:
    history, texts = linear_history(LONG)
    made = await post_json(
        f"{gateway.url}/api/v1/chats/new", token, {"chat": {"title": "long", "history": history}}
    )
    return str(made["id"]), texts


def sent_for(upstream: FakeUpstream, question: str) -> list[dict[str, Any]]:
    """The conversation the model server was sent with this question."""
    (request,) = upstream.requests_for(question)
    messages: list[dict[str, Any]] = request.body["messages"]
    return messages


def assert_whole_path(sent: list[dict[str, Any]], texts: list[str], question: str) -> None:
    assert [m["content"] for m in sent] == [*texts, question]
    assert [m["role"] for m in sent[:4]] == ["user", "assistant", "user", "assistant"]


async def test_a_nadoo_turn_in_a_long_chat_sends_the_whole_path_and_is_stored(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    token = make_token(f"long-nadoo-{uuid.uuid4().hex[:8]}")
    chat_id, texts = await long_chat(gateway, token)
    question = f"the question after {LONG} messages {uuid.uuid4().hex[:6]}"
    async with websockets.connect(ws_url(gateway, "/ws/chat/long", token)) as ws:
        assert (await recv(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "chat", "content": question, "chat_id": chat_id}))
        text = ""
        while (frame := await recv(ws, 30))["type"] != "response_end":
            assert frame["type"] != "error", frame
            text += frame.get("text", "") if frame["type"] == "text-delta" else ""
    sent = sent_for(fake_upstream, question)
    assert_whole_path(sent, texts, question)
    assert text == frame["full_response"] == reply_text("fake-model", sent)
    chat = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    history = chat["chat"]["history"]
    assert len(history["messages"]) == LONG + 2
    answer = history["messages"][frame["message_id"]]
    asked = history["messages"][answer["parentId"]]
    assert history["currentId"] == answer["id"] and answer["content"] == text
    assert asked["content"] == question and asked["parentId"] == f"m{LONG - 1}"
    assert [m["content"] for m in chat["chat"]["messages"]] == [*texts, question, text]


async def test_a_web_app_turn_in_a_long_chat_sends_the_whole_path_and_is_stored(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    token = make_token(f"long-webapp-{uuid.uuid4().hex[:8]}")
    chat_id, texts = await long_chat(gateway, token)
    question = f"the web app asks after {LONG} messages {uuid.uuid4().hex[:6]}"
    sock = await PySocket().connect(gateway.url, token)
    try:
        body = turn_body(sock.sid, question, chat_id=chat_id, parent_id=f"m{LONG - 1}")
        await post_json(f"{gateway.url}/api/chat/completions", token, body)
        events = await sock.wait_ended(timeout_s=30)
    finally:
        await sock.close()
    sent = sent_for(fake_upstream, question)
    assert_whole_path(sent, texts, question)
    assert text_of(events, body["id"]) == reply_text("fake-model", sent)
    chat = await get_json(f"{gateway.url}/api/v1/chats/{chat_id}", token)
    messages = chat["chat"]["history"]["messages"]
    assert len(messages) == LONG + 2
    assert messages[body["user_message"]["id"]]["parentId"] == f"m{LONG - 1}"
    assert messages[body["id"]]["content"] == reply_text("fake-model", sent)


async def test_a_long_chat_reads_forks_and_is_found_whole(gateway: GatewayProcess) -> None:
    token = make_token(f"long-reads-{uuid.uuid4().hex[:8]}")
    chat_id, texts = await long_chat(gateway, token)
    url = f"{gateway.url}/api/v1/chats/{chat_id}"
    chat, history = await asyncio.gather(get_json(url, token), get_json(url, token))
    assert chat == history
    assert [m["content"] for m in chat["chat"]["messages"]] == texts
    assert chat["chat"]["history"]["currentId"] == f"m{LONG - 1}"
    middle = f"m{LONG // 2}"
    fork = await post_json(f"{url}/fork", token, {"message_id": middle})
    assert fork["id"] != chat_id and fork["chat"]["history"]["currentId"] == middle
    assert [m["content"] for m in fork["chat"]["messages"]] == texts[: LONG // 2 + 1]
    last = texts[-1]
    found = await get_json(f"{gateway.url}/api/v1/search?q={last.replace(' ', '+')}", token)
    (item,) = [item for item in found["items"] if item["id"] == chat_id]
    assert last in item["snippet"]
