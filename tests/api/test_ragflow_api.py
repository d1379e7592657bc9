"""The RAGFlow flavour end to end (docs/PROTOCOLS.md §3): the real `ragflow-sdk`, the
`openai` package and raw HTTP against a gateway process, with the fake upstream
on loopback.

RAGFlow answers every error with HTTP 200 and an envelope::

    {"code": 0, "message": "", "data": ...}      success
    {"code": 102, "message": "..."}              not yours / not found / clashes
    {"code": 101, "message": "..."}              missing or bad argument
    {"code": 109, "message": "...", "data": false}   bad API key
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from typing import Any

import openai
import pytest
import requests
from ragflow_sdk import RAGFlow
from ragflow_sdk.modules.chat import Chat

from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token

END = {"code": 0, "message": "", "data": True}
CHUNK_KEYS = {"answer", "reference", "audio_binary", "id", "session_id"}
DEFAULT_OPENER = "Hi! I'm your assistant. What can I do for you?"


def reply(question: str, model: str = "fake-model") -> str:
    return reply_text(model, [{"role": "user", "content": question}])


class User:
    """A fresh user: a JWT, and a RAGFlow key made with it (`/v1/system/new_token`)."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.id = f"rf-{uuid.uuid4().hex[:12]}"
        self.jwt = make_token(self.id)
        body = call(gateway, self.jwt, "POST", "/ragflow/v1/system/new_token")
        assert body["code"] == 0, body
        self.key: str = body["data"]["token"]
        self.rag = RAGFlow(api_key=self.key, base_url=f"{gateway.url}/ragflow")

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A RAGFlow API call (`/ragflow/api/v1` + path); asserts HTTP 200, returns the envelope."""
        return call(self.gateway, token or self.key, method, "/ragflow/api/v1" + path, body)

    def chat(self, name: str | None = None, **body: Any) -> dict[str, Any]:
        created = self.api(
            "POST", "/chats", {"name": name or f"chat-{uuid.uuid4().hex[:8]}", **body}
        )
        assert created["code"] == 0, created
        data: dict[str, Any] = created["data"]
        return data

    def session(self, chat_id: str, name: str = "New session") -> dict[str, Any]:
        created = self.api("POST", f"/chats/{chat_id}/sessions", {"name": name})
        assert created["code"] == 0, created
        data: dict[str, Any] = created["data"]
        return data

    def sessions(self, chat_id: str) -> list[dict[str, Any]]:
        listed = self.api("GET", f"/chats/{chat_id}/sessions")
        assert listed["code"] == 0, listed
        data: list[dict[str, Any]] = listed["data"]
        return data

    def webui_chats(self) -> list[dict[str, Any]]:
        resp = requests.get(
            f"{self.gateway.url}/api/v1/chats/",
            headers={"Authorization": f"Bearer {self.jwt}"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        chats: list[dict[str, Any]] = resp.json()
        return chats


def call(
    gateway: GatewayProcess,
    token: str,
    method: str,
    path: str,
    body: Any = None,
    expect: int = 200,
) -> Any:
    resp = requests.request(
        method,
        gateway.url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )
    assert resp.status_code == expect, (method, path, resp.status_code, resp.text)
    return resp.json()


def sse_payloads(resp: requests.Response) -> list[str]:
    """The `data:` payloads of a RAGFlow event stream, checking RAGFlow's framing:
    `data:<json>` with no space after the colon, one frame per blank-line block."""
    text = resp.text
    assert text.endswith("\n\n"), repr(text[-80:])
    payloads = []
    for block in text.split("\n\n")[:-1]:
        if block.startswith(":"):
            continue  # an SSE comment (keep-alive)
        assert block.startswith("data:"), repr(block)
        assert not block.startswith("data: "), repr(block)
        payloads.append(block[len("data:") :])
    return payloads


def ask_raw(user: User, chat_id: str, body: dict[str, Any]) -> requests.Response:
    resp = requests.post(
        f"{user.gateway.url}/ragflow/api/v1/chats/{chat_id}/completions",
        json=body,
        headers={"Authorization": f"Bearer {user.key}"},
        timeout=20,
    )
    assert resp.status_code == 200, resp.text
    return resp


def assert_event_stream(resp: requests.Response) -> None:
    assert resp.headers["Content-Type"].split(";")[0].strip() == "text/event-stream"
    assert resp.headers["X-Accel-Buffering"] == "no"


# -- getting a key -----------------------------------------------------------------
def test_new_token_makes_a_key_of_the_same_user(gateway: GatewayProcess) -> None:
    user_id = f"rf-{uuid.uuid4().hex[:12]}"
    jwt = make_token(user_id)
    body = call(gateway, jwt, "POST", "/ragflow/v1/system/new_token")
    assert body["code"] == 0 and body["message"] == "success", body
    token = body["data"]["token"]
    assert re.fullmatch(r"ragflow-[A-Za-z0-9_-]{43}", token), token
    second = call(gateway, jwt, "POST", "/ragflow/v1/system/new_token")["data"]["token"]
    assert second != token

    # What the key makes belongs to the JWT's user, and the other way round.
    name = f"owned-{uuid.uuid4().hex[:8]}"
    made = call(gateway, token, "POST", "/ragflow/api/v1/chats", {"name": name})
    assert made["code"] == 0, made
    seen = call(gateway, jwt, "GET", f"/ragflow/api/v1/chats?id={made['data']['id']}")
    assert seen["code"] == 0 and [c["name"] for c in seen["data"]] == [name]
    assert made["data"]["tenant_id"] == user_id
    by_jwt = call(gateway, jwt, "POST", "/ragflow/api/v1/chats", {"name": name + "-jwt"})
    by_key = RAGFlow(api_key=token, base_url=f"{gateway.url}/ragflow").list_chats()
    assert {c.name for c in by_key} == {name, name + "-jwt"}
    assert by_jwt["data"]["tenant_id"] == user_id
    # Any key works on every flavour as its owner: Open WebUI's API with the RAGFlow key.
    resp = requests.get(
        f"{gateway.url}/api/v1/auths/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert resp.status_code == 200 and resp.json()["id"] == user_id, resp.text


def test_new_token_needs_a_valid_token(gateway: GatewayProcess) -> None:
    body = call(gateway, "not-a-token", "POST", "/ragflow/v1/system/new_token")
    assert body["code"] == 109 and body["data"] is False, body


# -- the SDK end to end ------------------------------------------------------------
def test_sdk_create_list_update_delete_chats(gateway: GatewayProcess) -> None:
    rag = User(gateway).rag
    first = rag.create_chat("first")
    # No model named: the gateway picks the first upstream model.
    assert first.llm.model_name == "fake-model"
    time.sleep(0.01)
    slow = rag.create_chat(
        "second",
        llm=Chat.LLM(rag, {"model_name": "fake-slow", "temperature": 0.5, "max_tokens": 100}),
    )
    assert slow.llm.model_name == "fake-slow" and slow.llm.temperature == 0.5
    time.sleep(0.01)
    third = rag.create_chat("third")

    assert [c.name for c in rag.list_chats()] == ["third", "second", "first"]
    assert [c.name for c in rag.list_chats(desc=False)] == ["first", "second", "third"]
    assert [c.id for c in rag.list_chats(id=slow.id)] == [slow.id]
    assert rag.list_chats(id=slow.id)[0].llm.model_name == "fake-slow"
    assert [c.id for c in rag.list_chats(name="first")] == [first.id]
    assert [c.name for c in rag.list_chats(page=1, page_size=2)] == ["third", "second"]
    with pytest.raises(Exception, match="The chat doesn't exist"):
        rag.list_chats(id=uuid.uuid4().hex)
    with pytest.raises(Exception, match="The chat doesn't exist"):
        rag.list_chats(name="nobody")

    third.update({"name": "renamed"})
    assert rag.list_chats(id=third.id)[0].name == "renamed"
    # The model kept by an update that does not name it.
    assert rag.list_chats(id=third.id)[0].llm.model_name == "fake-model"

    rag.delete_chats(ids=[first.id, third.id])
    assert [c.id for c in rag.list_chats()] == [slow.id]
    rag.delete_chats(ids=[slow.id])
    assert rag.list_chats() == []


def test_sdk_chat_keeps_the_model_it_was_made_with(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    rag = User(gateway).rag
    llm = Chat.LLM(rag, {"model_name": "fake-slow", "temperature": 0.5, "max_tokens": 100})
    chat = rag.create_chat("slow", llm=llm)
    question = f"slow question {uuid.uuid4().hex}"
    answer = next(chat.create_session().ask(question, stream=False))
    # Stored and answered trimmed, as Open WebUI trims a reply (fake-slow ends in a space).
    assert answer.content == reply(question, "fake-slow").strip()
    sent = fake_upstream.requests_for(question)[-1].body
    assert sent["model"] == "fake-slow"
    # The assistant's sampling settings go with the question (RAGFlow's gen_conf).
    assert sent["temperature"] == 0.5 and sent["max_tokens"] == 100


def test_sdk_cumulative_stream(gateway: GatewayProcess) -> None:
    rag = User(gateway).rag
    session = rag.create_chat("c").create_session()
    assert session.name == "New session"
    assert session.messages == [{"role": "assistant", "content": DEFAULT_OPENER}]
    question = f"cumulative {uuid.uuid4().hex[:6]}"
    contents = [m.content for m in session.ask(question, stream=True)]
    # RAGFlow ≤ 0.23: each answer is the whole text so far.
    assert len(contents) > 2, contents
    for before, after in itertools.pairwise(contents):
        assert after.startswith(before) and len(after) > len(before), (before, after)
    assert contents[-1] == reply(question)


def test_sdk_delta_stream(gateway: GatewayProcess) -> None:
    rag = User(gateway).rag
    session = rag.create_chat("d").create_session()
    question = f"delta {uuid.uuid4().hex[:6]}"
    contents = [m.content for m in session.ask(question, stream=True, answer_mode="delta")]
    # RAGFlow ≥ 0.24: deltas, then an empty final chunk.
    assert len(contents) > 2, contents
    assert contents[-1] == ""
    assert "".join(contents) == reply(question)
    assert all(contents[:-1]), contents


def test_sdk_conversation(gateway: GatewayProcess, fake_upstream: FakeUpstream) -> None:
    user = User(gateway)
    rag = user.rag
    prompt = Chat.Prompt(rag, {"prompt": "You are terse.", "opener": "Hello, tester."})
    chat = rag.create_chat("talk", prompt=prompt)
    session = chat.create_session()
    assert session.messages == [{"role": "assistant", "content": "Hello, tester."}]

    first_q, second_q = (f"{word} {uuid.uuid4().hex[:8]}" for word in ("first", "second"))
    first = next(session.ask(first_q, stream=False))
    assert first.content == reply(first_q)
    streamed = list(session.ask(second_q, stream=True))
    assert streamed[-1].content == reply(second_q)

    # The second question is asked with the first one and its answer.
    sent = fake_upstream.requests_for(second_q)[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "You are terse."),
        ("user", first_q),
        ("assistant", reply(first_q)),
        ("user", second_q),
    ]

    (listed,) = chat.list_sessions()
    assert listed.id == session.id and listed.chat_id == chat.id
    assert [(m["role"], m["content"]) for m in listed.messages] == [
        ("assistant", "Hello, tester."),
        ("user", first_q),
        ("assistant", reply(first_q)),
        ("user", second_q),
        ("assistant", reply(second_q)),
    ]
    ids = [m.get("id") for m in listed.messages[1:]]
    assert all(ids) and len(set(ids)) == 4, ids

    # The session is a chat of the core: its owner's Open WebUI sidebar has it.
    assert [(c["id"], c["title"]) for c in user.webui_chats()] == [(session.id, "New session")]
    resp = requests.get(
        f"{gateway.url}/api/v1/chats/{session.id}",
        headers={"Authorization": f"Bearer {user.jwt}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    history = resp.json()["chat"]["history"]
    messages = history["messages"]
    assert set(messages) == set(ids)
    path = []
    node: str | None = history["currentId"]
    while node is not None:
        path.append(messages[node])
        node = messages[node]["parentId"]
    path.reverse()
    assert [m["id"] for m in path] == ids
    assert [m["role"] for m in path] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in path] == [first_q, reply(first_q), second_q, reply(second_q)]
    assert path[0]["parentId"] is None
    for parent, child in itertools.pairwise(path):
        assert child["parentId"] == parent["id"] and parent["childrenIds"] == [child["id"]]
    assert path[-1]["childrenIds"] == []
    assert all(m["done"] is True for m in path if m["role"] == "assistant")

    chat.delete_sessions(ids=[session.id])
    assert chat.list_sessions() == []
    assert user.webui_chats() == []
    rag.delete_chats(ids=[chat.id])
    assert rag.list_chats() == []


def test_sdk_sessions_list_and_delete(gateway: GatewayProcess) -> None:
    rag = User(gateway).rag
    chat = rag.create_chat("sessions")
    one = chat.create_session("one")
    time.sleep(1.1)  # sessions are chats of the core: seconds resolution
    two = chat.create_session("two")
    assert [s.name for s in chat.list_sessions()] == ["two", "one"]
    assert [s.id for s in chat.list_sessions(name="one")] == [one.id]
    assert [s.id for s in chat.list_sessions(id=two.id)] == [two.id]
    chat.delete_sessions(ids=[one.id])
    assert [s.id for s in chat.list_sessions()] == [two.id]
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises a bare Exception
        chat.delete_sessions(ids=[one.id])


# -- raw HTTP shapes ---------------------------------------------------------------
def test_stream_frames(gateway: GatewayProcess) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    session_id = user.session(chat_id)["id"]
    question = f"frames {uuid.uuid4().hex[:6]}"
    resp = ask_raw(user, chat_id, {"question": question, "stream": True, "session_id": session_id})
    assert_event_stream(resp)
    frames = [json.loads(p) for p in sse_payloads(resp)]
    assert frames[-1] == END
    chunks = frames[:-1]
    assert len(chunks) > 2
    for frame in chunks:
        assert frame["code"] == 0 and frame["message"] == ""
        assert set(frame["data"]) == CHUNK_KEYS, frame
        assert frame["data"]["session_id"] == session_id
        assert frame["data"]["reference"] == {} and frame["data"]["audio_binary"] is None
    assert len({f["data"]["id"] for f in chunks}) == 1 and chunks[0]["data"]["id"]
    assert chunks[-1]["data"]["answer"] == reply(question)
    (listed,) = user.sessions(chat_id)
    assert listed["messages"][-1]["id"] == chunks[0]["data"]["id"]


def test_delta_frames(gateway: GatewayProcess) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    session_id = user.session(chat_id)["id"]
    question = f"delta frames {uuid.uuid4().hex[:6]}"
    body = {"question": question, "session_id": session_id, "answer_mode": "delta"}
    resp = ask_raw(user, chat_id, body)
    assert_event_stream(resp)
    frames = [json.loads(p) for p in sse_payloads(resp)]
    assert frames[-1] == END
    chunks = [f["data"] for f in frames[:-1]]
    assert [c.get("final") for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["answer"] == ""
    assert "".join(c["answer"] for c in chunks) == reply(question)


def test_non_stream_answer(gateway: GatewayProcess) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    session_id = user.session(chat_id)["id"]
    question = f"whole {uuid.uuid4().hex[:6]}"
    resp = ask_raw(user, chat_id, {"question": question, "stream": False, "session_id": session_id})
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["code"] == 0, body
    assert set(body["data"]) >= CHUNK_KEYS
    assert body["data"]["answer"] == reply(question)
    assert body["data"]["session_id"] == session_id


@pytest.mark.parametrize("stream", [True, False])
def test_question_without_session_opens_one(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, stream: bool
) -> None:
    user = User(gateway)
    chat_id = user.chat(prompt={"opener": "Welcome aboard."})["id"]
    question = f"no session {uuid.uuid4().hex}"
    resp = ask_raw(user, chat_id, {"question": question, "stream": stream})
    if stream:
        assert_event_stream(resp)
        frames = [json.loads(p) for p in sse_payloads(resp)]
        assert len(frames) == 2 and frames[-1] == END, frames
        data = frames[0]["data"]
        assert frames[0]["code"] == 0
    else:
        body = resp.json()
        assert body["code"] == 0, body
        data = body["data"]
    # RAGFlow ≤ 0.23: only the opener, with the new session's id; the question is not asked.
    assert data["answer"] == "Welcome aboard."
    (session,) = user.sessions(chat_id)
    assert data["session_id"] == session["id"]
    assert session["messages"] == [{"role": "assistant", "content": "Welcome aboard."}]
    assert fake_upstream.requests_for(question) == []


@pytest.mark.parametrize("with_session", [True, False])
@pytest.mark.parametrize("mode", ["Delta", "whole", 1])
def test_unknown_answer_mode(gateway: GatewayProcess, mode: object, with_session: bool) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    body: dict[str, Any] = {"question": "q", "answer_mode": mode}
    if with_session:
        body["session_id"] = user.session(chat_id)["id"]
    resp = ask_raw(user, chat_id, body)
    # Refused before anything happens, with or without a session: no opener stream.
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text
    answer = resp.json()
    assert answer["code"] == 101, answer
    assert len(user.sessions(chat_id)) == int(with_session)


@pytest.mark.parametrize("stream", [True, False])
def test_upstream_failure(gateway: GatewayProcess, stream: bool) -> None:
    user = User(gateway)
    chat_id = user.chat(llm={"model_name": "fake-error"})["id"]
    session_id = user.session(chat_id)["id"]
    resp = ask_raw(user, chat_id, {"question": "q", "stream": stream, "session_id": session_id})
    if stream:
        # RAGFlow streams the failure as an error chunk, then the end marker.
        frames = [json.loads(p) for p in sse_payloads(resp)]
        assert frames[-1] == END, frames
        assert frames[-2]["code"] == 500, frames
        assert frames[-2]["data"]["answer"].startswith("**ERROR**"), frames
        failed = frames[-2]["data"]
    else:
        body = resp.json()
        assert body["code"] == 500, body
        assert body["data"]["answer"].startswith("**ERROR**"), body
        failed = body["data"]
    # Which answer failed, in which session, as its chunks say (the gateway's addition).
    assert failed["session_id"] == session_id and failed["id"], failed


# -- RAGFlow's OpenAI-compatible route ---------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_openai_route(gateway: GatewayProcess, fake_upstream: FakeUpstream, stream: bool) -> None:
    user = User(gateway)
    chat_id = user.chat(prompt={"prompt": "Answer briefly."})["id"]
    user.session(chat_id)
    before_sessions = user.sessions(chat_id)
    before_chats = user.webui_chats()
    client = openai.OpenAI(
        api_key=user.key,
        base_url=f"{gateway.url}/ragflow/api/v1/chats_openai/{chat_id}",
        max_retries=0,
    )
    question = f"openai {uuid.uuid4().hex[:8]}"
    messages: list[Any] = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": question},
    ]
    if stream:
        chunks = list(client.chat.completions.create(model="model", messages=messages, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        completion = client.chat.completions.create(model="model", messages=messages)
        text = completion.choices[0].message.content or ""
    assert text == reply(question)
    sent = fake_upstream.requests_for(question)[-1].body
    assert sent["model"] == "fake-model"
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "Answer briefly."),
        ("user", "earlier"),
        ("assistant", "noted"),
        ("user", question),
    ]
    # As RAGFlow: nothing is stored.
    assert user.sessions(chat_id) == before_sessions
    assert user.webui_chats() == before_chats


def test_openai_route_raw_stream(gateway: GatewayProcess) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    question = f"raw openai {uuid.uuid4().hex[:6]}"
    resp = requests.post(
        f"{gateway.url}/ragflow/api/v1/chats_openai/{chat_id}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": question}], "stream": True},
        headers={"Authorization": f"Bearer {user.key}"},
        timeout=20,
    )
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].split(";")[0] == "text/event-stream"
    payloads = sse_payloads(resp)
    assert payloads[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, payloads[:-1])
        if c["choices"]
    )
    assert text == reply(question)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [{"role": "system", "content": "s"}],
        [{"role": "assistant", "content": "hello"}],
    ],
)
def test_openai_route_last_message_not_from_user(
    gateway: GatewayProcess, messages: list[dict[str, str]]
) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    body = user.api(
        "POST",
        f"/chats_openai/{chat_id}/chat/completions",
        {"model": "m", "messages": messages, "stream": False},
    )
    assert body["code"] == 102, body


def test_openai_route_refuses_offered_tools_in_its_own_shape(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    """The route answers with the assistant's own prompt: a request that offers tools
    is told so, and nothing reaches the model server (an empty list is no offer)."""
    user = User(gateway)
    chat_id = user.chat()["id"]
    question = f"tools {uuid.uuid4().hex[:8]}"
    tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    body = {"model": "m", "messages": [{"role": "user", "content": question}], "stream": False}
    refused = user.api(
        "POST", f"/chats_openai/{chat_id}/chat/completions", {**body, "tools": [tool]}
    )
    assert refused["code"] == 101 and "not supported on this route" in refused["message"], refused
    assert fake_upstream.requests_for(question) == []
    answered = user.api("POST", f"/chats_openai/{chat_id}/chat/completions", {**body, "tools": []})
    assert answered["choices"][0]["message"]["content"] == reply(question), answered
    assert "tools" not in fake_upstream.requests_for(question)[-1].body


# -- errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/chats", None),
        ("POST", "/chats", {"name": "x"}),
        ("PUT", "/chats/abc", {"name": "x"}),
        ("DELETE", "/chats", {"ids": ["abc"]}),
        ("POST", "/chats/abc/sessions", {"name": "x"}),
        ("GET", "/chats/abc/sessions", None),
        ("POST", "/chats/abc/completions", {"question": "q", "stream": True}),
        ("POST", "/chats_openai/abc/chat/completions", {"model": "m", "messages": []}),
    ],
)
@pytest.mark.parametrize("token", ["ragflow-" + "x" * 43, "garbage", "sk-" + "0" * 32])
def test_bad_key(gateway: GatewayProcess, method: str, path: str, body: Any, token: str) -> None:
    answer = call(gateway, token, method, "/ragflow/api/v1" + path, body)
    assert answer["code"] == 109 and answer["data"] is False, answer


def test_sdk_bad_key(gateway: GatewayProcess) -> None:
    rag = RAGFlow(api_key="ragflow-" + "y" * 43, base_url=f"{gateway.url}/ragflow")
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises a bare Exception
        rag.list_chats()
    with pytest.raises(Exception):  # noqa: B017
        rag.create_chat("nope")


INTRUSIONS = {
    "create session": ("POST", "/chats/{chat}/sessions", {"name": "intruder"}),
    "list sessions": ("GET", "/chats/{chat}/sessions", None),
    "list sessions by id": ("GET", "/chats/{chat}/sessions?id={session}", None),
    "rename session": ("PUT", "/chats/{chat}/sessions/{session}", {"name": "intruder"}),
    "delete sessions": ("DELETE", "/chats/{chat}/sessions", {"ids": ["{session}"]}),
    "ask": ("POST", "/chats/{chat}/completions", {"question": "{q}", "session_id": "{session}"}),
    "ask whole": (
        "POST",
        "/chats/{chat}/completions",
        {"question": "{q}", "session_id": "{session}", "stream": False},
    ),
    "ask without session": ("POST", "/chats/{chat}/completions", {"question": "{q}"}),
    "ask own chat, their session": (
        "POST",
        "/chats/{own}/completions",
        {"question": "{q}", "session_id": "{session}", "stream": False},
    ),
    "update": ("PUT", "/chats/{chat}", {"name": "intruder"}),
    "delete": ("DELETE", "/chats", {"ids": ["{chat}"]}),
    "list by id": ("GET", "/chats?id={chat}", None),
    "openai": (
        "POST",
        "/chats_openai/{chat}/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "{q}"}]},
    ),
    "openai stream": (
        "POST",
        "/chats_openai/{chat}/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "{q}"}], "stream": True},
    ),
}


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


@pytest.mark.parametrize("route", list(INTRUSIONS))
def test_another_users_chat(
    gateway: GatewayProcess, fake_upstream: FakeUpstream, route: str
) -> None:
    owner, intruder = User(gateway), User(gateway)
    secret_name = f"secret-{uuid.uuid4().hex[:8]}"
    secret_opener = f"opener-{uuid.uuid4().hex[:8]}"
    chat = owner.chat(secret_name, prompt={"opener": secret_opener})
    session = owner.session(chat["id"], name=f"session-{uuid.uuid4().hex[:8]}")
    own = intruder.chat()
    question = f"intrusion {uuid.uuid4().hex}"
    names = {"chat": chat["id"], "session": session["id"], "own": own["id"], "q": question}
    method, path, body = INTRUSIONS[route]

    resp = requests.request(
        method,
        f"{gateway.url}/ragflow/api/v1{_fill(path, names)}",
        json=_fill(body, names),
        headers={"Authorization": f"Bearer {intruder.key}"},
        timeout=20,
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["code"] == 102, answer
    assert not answer.get("data"), answer
    for secret in (secret_name, secret_opener, session["name"], owner.id):
        assert secret not in resp.text

    # The owner's things are as they were; the question never reached the model.
    assert owner.api("GET", f"/chats?id={chat['id']}")["data"][0]["name"] == secret_name
    assert owner.sessions(chat["id"]) == [session]
    assert intruder.sessions(own["id"]) == []
    assert [c["id"] for c in intruder.webui_chats()] == []
    assert fake_upstream.requests_for(question) == []


def test_unknown_session(gateway: GatewayProcess) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    for stream in (True, False):
        body = ask_raw(
            user, chat_id, {"question": "q", "stream": stream, "session_id": uuid.uuid4().hex}
        ).json()
        assert body["code"] == 102, body
    renamed = user.api("PUT", f"/chats/{chat_id}/sessions/{uuid.uuid4().hex}", {"name": "n"})
    assert renamed["code"] == 102, renamed
    deleted = user.api("DELETE", f"/chats/{chat_id}/sessions", {"ids": [uuid.uuid4().hex]})
    assert deleted["code"] == 102, deleted


def test_a_session_is_asked_only_through_its_own_assistant(gateway: GatewayProcess) -> None:
    """The same user's other assistant cannot answer into a session (code 102, as
    another user's); through its own, it can, and the session is untouched before."""
    user = User(gateway)
    own, other = user.chat()["id"], user.chat()["id"]
    session_id = user.session(own)["id"]
    for stream in (True, False):
        body = {"question": "q", "stream": stream, "session_id": session_id}
        refused = ask_raw(user, other, body).json()
        assert refused["code"] == 102 and session_id in refused["message"], refused
    [listed] = user.sessions(own)
    assert [m["role"] for m in listed["messages"]] == ["assistant"]  # only its opener
    answer = ask_raw(user, own, {"question": "q", "stream": False, "session_id": session_id})
    assert answer.json()["code"] == 0, answer.text


def test_unknown_chat(gateway: GatewayProcess) -> None:
    user = User(gateway)
    unknown = uuid.uuid4().hex
    for method, path, body in [
        ("POST", f"/chats/{unknown}/sessions", {"name": "s"}),
        ("GET", f"/chats/{unknown}/sessions", None),
        ("PUT", f"/chats/{unknown}", {"name": "n"}),
        ("DELETE", "/chats", {"ids": [unknown]}),
        ("POST", f"/chats/{unknown}/completions", {"question": "q"}),
    ]:
        answer = user.api(method, path, body)
        assert answer["code"] == 102, (method, path, answer)


@pytest.mark.parametrize("body", [{}, {"question": ""}, {"question": "   "}, {"stream": False}])
def test_missing_question(gateway: GatewayProcess, body: dict[str, Any]) -> None:
    user = User(gateway)
    chat_id = user.chat()["id"]
    session_id = user.session(chat_id)["id"]
    answer = ask_raw(user, chat_id, {**body, "session_id": session_id}).json()
    assert answer["code"] == 101, answer
    assert user.sessions(chat_id)[0]["messages"] == [
        {"role": "assistant", "content": DEFAULT_OPENER}
    ]


def test_chat_creation_errors(gateway: GatewayProcess) -> None:
    user = User(gateway)
    rag = user.rag
    for name in ("", "   "):
        created = user.api("POST", "/chats", {"name": name})
        assert created["code"] == 102 and created["message"] == "`name` is required.", created
    assert user.api("POST", "/chats", {})["code"] == 102
    with pytest.raises(Exception, match=re.escape("`name` is required.")):
        rag.create_chat("")

    rag.create_chat("taken")
    assert user.api("POST", "/chats", {"name": "taken"})["code"] == 102
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises a bare Exception
        rag.create_chat("taken")
    # Renaming onto a taken name clashes too.
    other = rag.create_chat("other")
    assert user.api("PUT", f"/chats/{other.id}", {"name": "taken"})["code"] == 102
    assert user.api("PUT", f"/chats/{other.id}", {"name": ""})["code"] == 102

    assert user.api("POST", "/chats", {"name": "kb", "dataset_ids": ["x"]})["code"] == 102
    with pytest.raises(Exception):  # noqa: B017
        rag.create_chat("kb", dataset_ids=["x"])
    unknown_model = {"name": "m", "llm": {"model_name": "no-such-model"}}
    assert user.api("POST", "/chats", unknown_model)["code"] == 102
    with pytest.raises(Exception):  # noqa: B017
        rag.create_chat("m", llm=Chat.LLM(rag, {"model_name": "no-such-model"}))
    assert user.api("PUT", f"/chats/{other.id}", {"llm": {"model_name": "nope"}})["code"] == 102

    # Only the two good chats were made.
    assert sorted(c.name for c in rag.list_chats()) == ["other", "taken"]


def test_unknown_route_keeps_its_404(gateway: GatewayProcess) -> None:
    user = User(gateway)
    for path in ("/ragflow/api/v1/nothing-here", "/ragflow/api/v1/chats/x/nothing"):
        resp = requests.get(
            gateway.url + path, headers={"Authorization": f"Bearer {user.key}"}, timeout=10
        )
        assert resp.status_code == 404, (path, resp.status_code, resp.text)
