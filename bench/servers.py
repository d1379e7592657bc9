"""Processes the benchmarks measure against: a paced fake upstream, a bare relay,
and python-socketio's own emit loop.

    python -m bench.servers upstream PORT DELTAS DELAY_S
    python -m bench.servers relay PORT UPSTREAM_URL
    python -m bench.servers sio-emit PORT DELTAS DELAY_S
    python -m bench.servers flavour-relay PORT UPSTREAM_URL

The upstream streams DELTAS OpenAI chunks DELAY_S apart.  The relay is the
least a gateway can do: read the upstream's SSE and write the bytes to the
client as they come, with one shared client session.  It is the baseline
for "CPU per chunk".  The emit loop is the least a Socket.IO server can do:
on a client's `start`, emit DELTAS Open WebUI `events` to it DELAY_S apart
with `AsyncServer.emit`, then one end event.

Every one of them runs on the event loop the gateway runs on (`event_loop`).

The flavour relay is the bare relay of every flavour of the gateway, in one
process (`bench.bench_flavours`): it reads the upstream's SSE and writes each
delta in the flavour's own frame and transport, nothing more (no auth, no
store, no fan-out):

* `POST /v1/chat/completions` — OpenAI SSE, the bytes as they come (as `relay`);
* `POST /ragflow/api/v1/chats/{chat_id}/completions` — RAGFlow SSE chunks
  (`data:{json}`, cumulative `answer`, or deltas with `answer_mode: delta`),
  then the end marker;
* `GET /ragflow/v1/ws/chat` — RAGFlow's WebSocket: one text frame per delta
  (`answer` a delta, `final: false`; the text so far with `answer_mode:
  cumulative`), a `final: true` chunk and the end marker;
* `GET /ws/chat/{session_id}` — Nadoo's chat socket: `connected`, then per
  question `response_start`, one `text-delta` per delta, `response_end`;
* Socket.IO at `/ws/socket.io` and `POST /api/chat/completions` (the web app's
  turn, naming its socket in `session_id`): answered at once, then the reply
  emitted to that socket as Open WebUI `events` with `AsyncServer.emit`
  (`chat:active`, one `chat:message:delta` per delta, `chat:completion`,
  `chat:active` false).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web


def upstream_app(deltas: int, delay_s: float) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        data = [{"id": "bench", "object": "model", "created": 0, "owned_by": "bench"}]
        return web.json_response({"object": "list", "data": data})

    # When the request whose last message was a `closed:` marker lost its client
    # (time.monotonic(), the machine's clock: `bench.bench_disconnect` reads it).
    closed: dict[str, float] = {}

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        marker = ""
        if b'"closed:' in body:
            marker = json.loads(body)["messages"][-1]["content"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
        try:
            for index in range(deltas):
                await asyncio.sleep(delay_s)
                chunk = {
                    **head,
                    "choices": [
                        {"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": None}
                    ],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        except (asyncio.CancelledError, ConnectionResetError):
            if marker:  # the handler is cancelled as the connection is lost
                closed[marker] = time.monotonic()
            raise
        done = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def closed_at(request: web.Request) -> web.Response:
        return web.json_response(closed.pop(request.match_info["marker"], None))

    app = web.Application(client_max_size=64 << 20)  # a long chat's whole conversation
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/bench/closed/{marker}", closed_at)
    return app


def relay_app(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=1000)
        async with aiohttp.ClientSession(connector=connector) as session:
            app["session"] = session
            yield

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        headers = {"Content-Type": "application/json"}
        async with session.post(f"{upstream}/chat/completions", data=body, headers=headers) as up:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for data in up.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def sio_emit_app(deltas: int, delay_s: float) -> web.Application:
    import socketio

    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")

    async def stream(sid: str, message_id: str) -> None:
        for index in range(deltas):
            await asyncio.sleep(delay_s)
            data = {"type": "chat:message:delta", "data": {"content": f"tok{index} "}}
            await sio.emit(
                "events", {"chat_id": "c", "message_id": message_id, "data": data}, to=sid
            )
        end = {"type": "chat:active", "data": {"active": False}}
        await sio.emit("events", {"chat_id": "c", "message_id": message_id, "data": end}, to=sid)

    @sio.on("start")  # type: ignore[untyped-decorator]
    async def start(sid: str, message_id: str) -> None:
        asyncio.get_running_loop().create_task(stream(sid, message_id))

    app = web.Application()
    sio.attach(app, socketio_path="ws/socket.io")
    return app


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def upstream_deltas(
    session: aiohttp.ClientSession, upstream: str, question: str, model: str = "bench"
) -> AsyncIterator[str]:
    """The text deltas of one streamed answer of the upstream, as they come."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": True}
    async with session.post(f"{upstream}/chat/completions", json=body) as up:
        up.raise_for_status()
        async for line in up.content:
            if not line.startswith(b"data: {"):
                continue  # blank lines between events, and `data: [DONE]`
            choices = json.loads(line[6:])["choices"]
            if choices and (text := choices[0]["delta"].get("content")):
                yield text


RAGFLOW_END = '{"code":0,"message":"","data":true}'


def _ragflow_chunk(answer: str, message_id: str, session_id: str, **extra: Any) -> str:
    data = {
        "answer": answer,
        "reference": {},
        "audio_binary": None,
        "id": message_id,
        "session_id": session_id,
        **extra,
    }
    return _compact({"code": 0, "message": "", "data": data})


def _nadoo_frame(kind: str, **fields: Any) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return _compact({"type": kind, **fields, "timestamp": stamp})


def flavour_relay_app(upstream: str) -> web.Application:
    import socketio

    app = relay_app(upstream)  # the OpenAI SSE pass-through and the shared session

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": True})

    async def ragflow_sse(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        session_id = body.get("session_id") or uuid.uuid4().hex
        message_id = uuid.uuid4().hex
        delta = body.get("answer_mode") == "delta"
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        parts: list[str] = []
        async for text in upstream_deltas(request.app["session"], upstream, body["question"]):
            if delta:
                frame = _ragflow_chunk(text, message_id, session_id, final=False)
            else:
                parts.append(text)
                frame = _ragflow_chunk("".join(parts), message_id, session_id)
            await response.write(f"data:{frame}\n\n".encode())
        if delta:
            final = _ragflow_chunk("", message_id, session_id, final=True)
            await response.write(f"data:{final}\n\n".encode())
        await response.write(f"data:{RAGFLOW_END}\n\n".encode())
        await response.write_eof()
        return response

    async def ragflow_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            session_id = frame.get("session_id") or uuid.uuid4().hex
            message_id = uuid.uuid4().hex
            session = request.app["session"]
            cumulative = frame.get("answer_mode") == "cumulative"
            parts: list[str] = []
            async for text in upstream_deltas(session, upstream, frame["question"]):
                parts.append(text)
                answer = "".join(parts) if cumulative else text
                await ws.send_str(_ragflow_chunk(answer, message_id, session_id, final=False))
            await ws.send_str(_ragflow_chunk("", message_id, session_id, final=True))
            await ws.send_str(RAGFLOW_END)
        return ws

    async def nadoo_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        session_id = request.match_info["session_id"]
        await ws.send_str(_nadoo_frame("connected", session_id=session_id, user_id="relay"))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            chat_id = frame.get("chat_id") or uuid.uuid4().hex
            ids = {"message_id": uuid.uuid4().hex, "chat_id": chat_id}
            began = time.monotonic()
            await ws.send_str(_nadoo_frame("response_start", **ids))
            parts: list[str] = []
            session = request.app["session"]
            async for text in upstream_deltas(session, upstream, frame["content"]):
                await ws.send_str(_nadoo_frame("text-delta", text=text, index=len(parts)))
                parts.append(text)
            end = {
                "full_response": "".join(parts),
                "tokens_used": len(parts),
                "response_time": round(time.monotonic() - began, 3),
            }
            await ws.send_str(_nadoo_frame("response_end", **end, **ids))
        return ws

    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
    sio.attach(app, socketio_path="ws/socket.io")
    tasks: set[asyncio.Task[None]] = set()

    async def sio_reply(sid: str, chat_id: str, message_id: str, question: str) -> None:
        async def emit(kind: str, data: Any) -> None:
            event = {
                "chat_id": chat_id,
                "message_id": message_id,
                "data": {"type": kind, "data": data},
            }
            await sio.emit("events", event, to=sid)

        await emit("chat:active", {"active": True})
        parts: list[str] = []
        async for text in upstream_deltas(app["session"], upstream, question):
            parts.append(text)
            await emit("chat:message:delta", {"content": text})
        await emit("chat:completion", {"done": True, "content": "".join(parts)})
        await emit("chat:active", {"active": False})

    async def sio_turn(request: web.Request) -> web.Response:
        body = await request.json()
        chat_id = body.get("chat_id") or uuid.uuid4().hex
        message_id = body.get("id") or uuid.uuid4().hex
        question = body["user_message"]["content"]
        task = asyncio.get_running_loop().create_task(
            sio_reply(body["session_id"], chat_id, message_id, question)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return web.json_response({"status": True, "task_ids": [message_id], "chat_id": chat_id})

    app.router.add_get("/health", health)
    app.router.add_post("/ragflow/api/v1/chats/{chat_id}/completions", ragflow_sse)
    app.router.add_get("/ragflow/v1/ws/chat", ragflow_ws)
    app.router.add_get("/ws/chat/{session_id}", nadoo_ws)
    app.router.add_post("/api/chat/completions", sio_turn)
    return app


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "upstream":
        app = upstream_app(int(sys.argv[3]), float(sys.argv[4]))
    elif kind == "sio-emit":
        app = sio_emit_app(int(sys.argv[3]), float(sys.argv[4]))
    elif kind == "flavour-relay":
        app = flavour_relay_app(sys.argv[3])
    else:
        app = relay_app(sys.argv[3])
    serve(app, port)


def serve(app: web.Application, port: int) -> None:
    """Run `app` on loopback until killed, on the gateway's event loop."""
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        backlog=1024,
        loop=event_loop(),
        # A client gone cancels its handler at once (the upstream notes when).
        handler_cancellation=True,
    )


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop the gateway runs on by default (`GATEWAY_EVENT_LOOP=auto`: uvloop's
    where it is installed), so a baseline and the gateway differ in their code, not
    in their event loop; `GATEWAY_EVENT_LOOP=asyncio` runs both on asyncio's."""
    if os.environ.get("GATEWAY_EVENT_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    main()
