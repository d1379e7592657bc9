"""A fake OpenAI-compatible model server on loopback, run in a thread by the tests.

Models and what they do:

    fake-model     echoes "Fake reply to: <last user text>" in 3-character deltas, 5 ms apart
    fake-slow      64 deltas, 20 ms apart (for disconnect and cancel tests)
    fake-crawl     300 deltas, 50 ms apart (15 s: a reply a person can stop in a browser)
    fake-dies      sends 3 deltas, then drops the connection without [DONE]
    fake-error     answers HTTP 500 with an OpenAI error body
    fake-reasoner  sends reasoning_content deltas, then content
    fake-nousage   like fake-model, without the usage chunk
    fake-linger    like fake-model, but its HTTP body ends 50 ms after [DONE] (a server
                   that flushes [DONE] on its own, then the chunked terminator)
    fake-surrogate "ok " then a lone UTF-16 surrogate (a broken tokenizer's "\\ud83d")
    fake-think     like fake-model, its reasoning first in <think> tags and blank lines
                   around its answer (`THINKING`), all cut in 3-character deltas
    fake-parts     like fake-model, each delta's content a list of content parts
    fake-nul       like fake-model, with a NUL character in its text
    fake-loading   like fake-model, but its response's headers come only after 30 s (a
                   model server loading the model; for stops before the first byte)
    fake-flood     1,000 deltas of 5,000 characters, no pause (5 MB: slow-consumer tests);
                   `max_tokens` caps the number of deltas

Offered tools (`tools`), any model calls them instead of answering, as a model
would (`tool_call_deltas`): each offered tool (only the first with
`parallel_tool_calls: false`, only the one `tool_choice` names) with arguments
`{"question": <last user text>}`, the call's id and name first, then its arguments
in 3-character pieces, and `finish_reason: "tool_calls"`; the first piece also
carries `extra_content` (Gemini's thought signature, `sig<index>`).  Once the last message
is a tool's result, it answers "Fake reply to tool result: <the result>".

Every request is recorded (`requests`), with `disconnected=True` when the
client closed the connection before the reply ended.  `GET /v1/models` calls are
counted (`models_calls`); with `models_delay_s` set, each waits that long first
(a model server that hangs).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODELS = [
    "fake-model",
    "fake-slow",
    "fake-dies",
    "fake-error",
    "fake-reasoner",
    "fake-nousage",
    "fake-linger",
    "fake-flood",
    "fake-surrogate",
    "fake-crawl",
    "fake-think",
    "fake-parts",
    "fake-nul",
    "fake-loading",
]
LOADING_S = 30.0
# What fake-think reasons, before its answer.
THINKING = "Weighing it…\nstill weighing."
FLOOD_DELTAS = 1000
FLOOD_DELTA_CHARS = 5000


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


# The gateway's background tasks (gateway/chat/background.py) name themselves on
# their first line; a model answers them with JSON, here a fixed one.
TASK_ANSWERS = {
    "Task: title": '{"title": "🧪 Fake title"}',
    "Task: tags": 'Here you go: {"tags": ["Testing", "Fakes"]}',
    "Task: follow-ups": '```json\n{"follow_ups": ["Tell me more", "Why?"]}\n```',
}


async def loading(request: web.Request) -> None:
    """`LOADING_S` before the response begins, or until the client closes its
    connection (then counted as disconnected)."""
    deadline = time.monotonic() + LOADING_S
    while time.monotonic() < deadline:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the client left while the model was loading")
        await asyncio.sleep(0.02)


def tool_call_deltas(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The deltas of the calls a model makes to the tools `body` offers (none once
    the conversation ends with a tool's result)."""
    tools = [tool["function"]["name"] for tool in body.get("tools") or []]
    messages = body["messages"]
    if not tools or messages[-1].get("role") != "user":
        return []
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        tools = [choice["function"]["name"]]
    elif body.get("parallel_tool_calls") is False:
        tools = tools[:1]
    arguments = json.dumps({"question": last_user_text(messages)})
    deltas = []
    for index, name in enumerate(tools):
        function = {"name": name, "arguments": ""}
        first = {"index": index, "id": f"call_fake{index}", "type": "function"}
        first["extra_content"] = {"google": {"thought_signature": f"sig{index}"}}
        deltas.append({"tool_calls": [{**first, "function": function}]})
        for start in range(0, len(arguments), 3):
            piece = {"arguments": arguments[start : start + 3]}
            deltas.append({"tool_calls": [{"index": index, "function": piece}]})
    return deltas


def reply_text(model: str, messages: list[dict[str, Any]]) -> str:
    if messages and messages[-1].get("role") == "tool":
        return "".join(deltas_of(model, f"Fake reply to tool result: {messages[-1]['content']}"))
    asked = last_user_text(messages)
    task = TASK_ANSWERS.get(asked.partition("\n")[0])
    if task is not None:
        return task
    return "".join(deltas_of(model, f"Fake reply to: {asked}"))


def deltas_of(model: str, text: str) -> list[str]:
    if model == "fake-slow":
        return [f"w{i} " for i in range(64)]
    if model == "fake-crawl":
        return [f"c{i} " for i in range(300)]
    if model == "fake-flood":
        return [str(i % 10) * FLOOD_DELTA_CHARS for i in range(FLOOD_DELTAS)]
    if model == "fake-surrogate":
        return ["ok ", "\ud83d"]
    # (`reply_text` is cut again by `_reply`: these add their part once.)
    if model == "fake-think" and not text.startswith("<think>"):
        text = f"<think>\n{THINKING}\n</think>\n\n{text}\n\n"
    if model == "fake-nul" and not text.endswith("\x00!"):
        text = f"{text}\x00!"
    return [text[i : i + 3] for i in range(0, len(text), 3)]


def _written(body: dict[str, Any]) -> str:
    """A request's body as JSON text, to search; "" for one nested past what can be
    written (the tests of depth send such bodies to this session-wide server)."""
    try:
        return json.dumps(body)
    except RecursionError:
        return ""


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]
    started_at: float
    finished: bool = False
    disconnected: bool = False
    chunks_sent: int = 0
    ended: threading.Event = field(default_factory=threading.Event)
    # The gateway's end of the TCP connection: one per connection it opened.
    peer: object = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """`app` served on loopback, its handlers cancelled when their client leaves
    (as the gateway's are); its runner (to clean up) and port."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


class FakeUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[Recorded] = []
        self.delay_s = 0.005
        self.models_delay_s = 0.0
        self.models_calls = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def requests_for(self, text: str) -> list[Recorded]:
        return [r for r in self.requests if text in _written(r.body)]

    async def _models(self, request: web.Request) -> web.Response:
        self.models_calls += 1
        if self.models_delay_s:
            await asyncio.sleep(self.models_delay_s)
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in MODELS
        ]
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = Recorded(body, dict(request.headers), time.time())
        if request.transport is not None:
            record.peer = request.transport.get_extra_info("peername")
        self.requests.append(record)
        try:
            return await self._reply(request, body, record)
        except (asyncio.CancelledError, ConnectionResetError):
            record.disconnected = True
            raise
        finally:
            record.ended.set()

    async def _reply(
        self, request: web.Request, body: dict[str, Any], record: Recorded
    ) -> web.StreamResponse:
        model = body["model"]
        if model == "fake-error":
            error = {"error": {"message": "fake failure", "type": "server_error", "code": None}}
            return web.json_response(error, status=500)
        if model == "fake-loading":
            await loading(request)
        text = reply_text(model, body["messages"])
        pieces = deltas_of(model, text)
        if model == "fake-flood" and isinstance(body.get("max_tokens"), int):
            pieces = pieces[: body["max_tokens"]]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
        }

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            record.chunks_sent += 1

        delay = {"fake-slow": 0.02, "fake-crawl": 0.05, "fake-flood": 0.0}.get(model, self.delay_s)
        await send({"role": "assistant", "content": ""})
        calls = tool_call_deltas(body)
        for delta in calls:
            await asyncio.sleep(delay)
            await send(delta)
        if calls:
            pieces = []
        if model == "fake-reasoner":
            for piece in ("Let me ", "think."):
                await send({"reasoning_content": piece})
        for index, piece in enumerate(pieces):
            if model == "fake-dies" and index == 3:
                assert request.transport is not None
                request.transport.abort()  # no [DONE], no chunked terminator
                record.finished = True
                return response
            await asyncio.sleep(delay)
            if model == "fake-parts":
                await send({"content": [{"type": "text", "text": piece}]})
            else:
                await send({"content": piece})
        await send({}, "tool_calls" if calls else "stop")
        if model != "fake-nousage":
            usage = {
                **head,
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
            }
            await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        if model == "fake-linger":
            await asyncio.sleep(0.05)
        await response.write_eof()
        record.finished = True
        return response
