"""Processes the benchmarks measure against: a paced fake upstream, a bare relay,
and python-socketio's own emit loop.

    python -m bench.servers upstream PORT DELTAS DELAY_S
    python -m bench.servers relay PORT UPSTREAM_URL
    python -m bench.servers sio-emit PORT DELTAS DELAY_S

The upstream streams DELTAS OpenAI chunks DELAY_S apart.  The relay is the
least a gateway can do: read the upstream's SSE and write the bytes to the
client as they come, with one shared client session.  It is the baseline
for "CPU per chunk".  The emit loop is the least a Socket.IO server can do:
on a client's `start`, emit DELTAS Open WebUI `events` to it DELAY_S apart
with `AsyncServer.emit`, then one end event.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
from aiohttp import web


def upstream_app(deltas: int, delay_s: float) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        data = [{"id": "bench", "object": "model", "created": 0, "owned_by": "bench"}]
        return web.json_response({"object": "list", "data": data})

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
        for index in range(deltas):
            await asyncio.sleep(delay_s)
            chunk = {
                **head,
                "choices": [
                    {"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": None}
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        done = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
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


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "upstream":
        app = upstream_app(int(sys.argv[3]), float(sys.argv[4]))
    elif kind == "sio-emit":
        app = sio_emit_app(int(sys.argv[3]), float(sys.argv[4]))
    else:
        app = relay_app(sys.argv[3])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024)


if __name__ == "__main__":
    main()
