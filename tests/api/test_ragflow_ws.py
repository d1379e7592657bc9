"""RAGFlow's WebSocket chat: the docs' `websocket-client` client as written, many
questions on one socket, the path-named variant, health, and every documented error."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from typing import Any

import pytest
import websocket
import websockets

from tests.clients import get_json, post_json
from tests.fakes.upstream import reply_text
from tests.gatewayproc import GatewayProcess, make_token

END = {"code": 0, "message": "", "data": True}


async def ragflow_user(gateway: GatewayProcess) -> tuple[str, str, str]:
    """A user, their RAGFlow key, and one assistant of theirs: (jwt, key, chat_id)."""
    jwt_token = make_token(f"rag-{uuid.uuid4().hex[:10]}")
    made = await post_json(f"{gateway.url}/ragflow/v1/system/new_token", jwt_token, None)
    key = made["data"]["token"]
    created = await post_json(f"{gateway.url}/ragflow/api/v1/chats", key, {"name": "wx bot"})
    return jwt_token, key, created["data"]["id"]


class DocsClient:
    """RAGFlowWebSocketClient from RAGFlow's WebSocket API reference, kept as written
    (printing replaced by recording), run in a thread as its `run_forever` blocks."""

    def __init__(self, url: str, token: str, message: dict[str, Any]) -> None:
        self.url = f"{url}?token={token}"
        self.ws: Any = None
        self.message = message
        self.answer = ""
        self.errors: list[str] = []
        self.completed = False
        self.closed: tuple[Any, Any] | None = None

    def on_message(self, ws: Any, message: str) -> None:
        response = json.loads(message)
        if response["data"] is True:
            self.completed = True
            ws.close()
            return
        if response["code"] != 0:
            self.errors.append(response["message"])
            return
        self.answer += response["data"]["answer"]

    def on_error(self, ws: Any, error: Any) -> None:
        self.errors.append(str(error))

    def on_close(self, ws: Any, close_status_code: Any, close_msg: Any) -> None:
        self.closed = (close_status_code, close_msg)

    def on_open(self, ws: Any) -> None:
        def send_message() -> None:
            ws.send(json.dumps(self.message))

        threading.Thread(target=send_message).start()

    def connect(self) -> None:
        self.ws = websocket.WebSocketApp(
            self.url,
            on_open=self.on_open,
            on_message=self.on_message,
            on_error=self.on_error,
            on_close=self.on_close,
        )
        self.ws.run_forever()


async def test_the_documented_python_client_gets_the_whole_answer(
    gateway: GatewayProcess,
) -> None:
    jwt_token, key, chat_id = await ragflow_user(gateway)
    message = {
        "type": "chat",
        "chat_id": chat_id,
        "question": "What is machine learning?",
        "stream": True,
    }
    client = DocsClient(f"ws://127.0.0.1:{gateway.port}/v1/ws/chat", key, message)
    await asyncio.wait_for(asyncio.to_thread(client.connect), 20)
    expected = reply_text("fake-model", [{"role": "user", "content": message["question"]}])
    assert client.completed and client.errors == []
    # Delta answers by default on WebSocket: appending them is the answer.
    assert client.answer == expected
    # The question opened a session: a chat of the core, in the Open WebUI list.
    listed = await get_json(f"{gateway.url}/api/v1/chats/", jwt_token)
    assert [c["title"] for c in listed] == ["New session"]


async def test_one_socket_carries_a_whole_session(gateway: GatewayProcess) -> None:
    jwt_token, key, chat_id = await ragflow_user(gateway)
    url = f"ws://127.0.0.1:{gateway.port}/ragflow/v1/ws/chat?token={key}"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "chat", "chat_id": chat_id, "question": "first?"}))
        chunks = await answer(ws)
        session_id = chunks[0]["data"]["session_id"]
        assert "".join(c["data"]["answer"] for c in chunks) == reply_text(
            "fake-model", [{"role": "user", "content": "first?"}]
        )
        assert chunks[-1]["data"]["final"] is True and chunks[-1]["data"]["answer"] == ""
        follow = {
            "type": "chat",
            "chat_id": chat_id,
            "session_id": session_id,
            "question": "second?",
            "answer_mode": "cumulative",
        }
        await ws.send(json.dumps(follow))
        chunks = await answer(ws)
        answers = [c["data"]["answer"] for c in chunks]
        assert all(b.startswith(a) for a, b in itertools.pairwise(answers))
        assert answers[-1] == reply_text("fake-model", [{"role": "user", "content": "second?"}])
        assert {c["data"]["session_id"] for c in chunks} == {session_id}
        await ws.send(json.dumps({**follow, "question": "third?", "stream": False}))
        (whole,) = await answer(ws)
        assert whole["data"]["answer"] == reply_text(
            "fake-model", [{"role": "user", "content": "third?"}]
        )
    chat = await get_json(f"{gateway.url}/api/v1/chats/{session_id}", jwt_token)
    questions = [m["content"] for m in chat["chat"]["messages"] if m["role"] == "user"]
    assert questions == ["first?", "second?", "third?"]


async def answer(ws: Any) -> list[dict[str, Any]]:
    """Chunks of one answer, up to (not including) the end marker."""
    chunks = []
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), 10))) != END:
        assert frame["code"] == 0, frame
        chunks.append(frame)
    return chunks


async def test_the_path_variant_names_the_assistant(gateway: GatewayProcess) -> None:
    _, key, chat_id = await ragflow_user(gateway)
    url = f"ws://127.0.0.1:{gateway.port}/api/v1/ws/chats/{chat_id}/completions?token={key}"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"question": "via path"}))
        chunks = await answer(ws)
    assert "".join(c["data"]["answer"] for c in chunks) == reply_text(
        "fake-model", [{"role": "user", "content": "via path"}]
    )
    _, other_key, _ = await ragflow_user(gateway)
    url = f"ws://127.0.0.1:{gateway.port}/api/v1/ws/chats/{chat_id}/completions?token={other_key}"
    async with websockets.connect(url) as ws:
        refused = json.loads(await ws.recv())
        assert refused["code"] == 102 and refused["data"]["answer"].startswith("**ERROR**")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_health_needs_no_token(gateway: GatewayProcess) -> None:
    for path in ("/v1/ws/health", "/ragflow/v1/ws/health"):
        async with websockets.connect(f"ws://127.0.0.1:{gateway.port}{path}") as ws:
            assert json.loads(await ws.recv()) == {
                "status": "healthy",
                "message": "WebSocket connection established",
                "version": "1.0",
            }
            await ws.send("ping")
            echo = json.loads(await ws.recv())
            assert echo["echo"] == "ping" and float(echo["timestamp"]) > 0


@pytest.mark.parametrize("token", ["ragflow-" + "x" * 43, "garbage", None])
async def test_a_bad_token_gets_one_109_frame_then_1008(
    gateway: GatewayProcess, token: str | None
) -> None:
    query = f"?token={token}" if token else ""
    async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/v1/ws/chat{query}") as ws:
        frame = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert frame["code"] == 109
    assert frame["data"] == {"answer": f"**ERROR**: {frame['message']}", "reference": []}
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def bad_frames(chat_id: str) -> list[tuple[str, int, str]]:
    return [
        ("{not json", 400, "Invalid JSON format"),
        ("[1]", 400, "JSON object"),
        (json.dumps({"type": "dance", "chat_id": chat_id, "question": "q"}), 400, "dance"),
        (json.dumps({"type": "chat", "question": "q"}), 101, "chat_id"),
        (json.dumps({"type": "chat", "chat_id": chat_id}), 101, "question"),
        (json.dumps({"type": "chat", "chat_id": chat_id, "question": " "}), 101, "question"),
        (json.dumps({"type": "chat", "chat_id": "nope", "question": "q"}), 102, "nope"),
        (
            json.dumps({"type": "chat", "chat_id": chat_id, "question": "q", "session_id": "nope"}),
            102,
            "nope",
        ),
        (
            json.dumps(
                {"type": "chat", "chat_id": chat_id, "question": "q", "answer_mode": "loud"}
            ),
            400,
            "answer_mode",
        ),
    ]


async def test_each_bad_frame_gets_its_error_frame_and_the_socket_stays_open(
    gateway: GatewayProcess,
) -> None:
    _, key, chat_id = await ragflow_user(gateway)
    _, _, someone_elses = await ragflow_user(gateway)
    cases = [
        *bad_frames(chat_id),
        (json.dumps({"type": "chat", "chat_id": someone_elses, "question": "q"}), 102, ""),
    ]
    async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/v1/ws/chat?token={key}") as ws:
        for frame, code, mentions in cases:
            await ws.send(frame)
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["code"] == code, (frame, error)
            assert mentions in error["message"], (frame, error)
            assert error["data"] == {"answer": f"**ERROR**: {error['message']}", "reference": []}
        # Still open, still answering.
        await ws.send(json.dumps({"type": "chat", "chat_id": chat_id, "question": "still?"}))
        assert await answer(ws)


async def test_an_oversized_frame_is_closed_1009(start_gateway: Any) -> None:
    gw: GatewayProcess = start_gateway({"GATEWAY_MAX_FRAME_BYTES": "4096"})
    _, key, chat_id = await ragflow_user(gw)
    async with websockets.connect(f"ws://127.0.0.1:{gw.port}/v1/ws/chat?token={key}") as ws:
        await ws.send(json.dumps({"type": "chat", "chat_id": chat_id, "question": "x" * 5000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
