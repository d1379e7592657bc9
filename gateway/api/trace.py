"""Nadoo's plugin-debug socket, as a live reply trace (docs/PROTOCOLS.md §4):

    /api/v1/ws/plugin/debug/{execution_id}   execution id = a reply's message id

The reply's owner (or an admin) gets its trace (`edge/trace.py`): the
`execution_info` record, the records so far as one `debug_data` frame, then
each record as it happens (`step`, `api_call`, `log`) up to
`execution_complete` or `execution_error`; `ping` is answered `pong`.  Unlike
Nadoo's (scoped by the id alone) it needs a token: a trace names the model
server and the user's chat.  A reply unknown on this replica, or another
user's: an `error` frame, then close 1008 (the two are not told apart).
Traces are per replica: ask the replica that runs the reply (behind a sticky
proxy, the one that answered its request).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from gateway.application.keys import REPLIES
from gateway.application.replies import Replies
from gateway.errors import GatewayError
from gateway.events import Event
from gateway.flavours import nadoo
from gateway.transports.websocket import Connection, serve

PATH = "/api/v1/ws/plugin/debug/{execution_id}"


class TraceEndpoint:
    def __init__(self, replies: Replies, execution_id: str) -> None:
        self._replies = replies
        self._execution_id = execution_id

    def refused(self, error: GatewayError) -> list[str]:
        return [nadoo.debug_error(error.message)]

    def failed(self, error: GatewayError) -> list[str]:
        return [nadoo.debug_error(error.message)]

    def encode(self, conn: Connection, event: Event) -> list[str]:
        return []  # a trace's socket is in no room: nothing comes this way

    async def opened(self, conn: Connection) -> None:
        assert conn.principal is not None
        trace = self._replies.trace(conn.principal, self._execution_id)
        history, queue = trace.listen()
        if history:
            await conn.send(nadoo.debug_frame(history[0]))
        if len(history) > 1:
            await conn.send(nadoo.debug_history(history[1:]))

        async def relay() -> None:
            try:
                while (record := await queue.get()) is not None:
                    await conn.send(nadoo.debug_frame(record))
            except (ConnectionResetError, RuntimeError):
                pass  # the client went away mid-write
            finally:
                trace.unlisten(queue)

        conn.state["relay"] = asyncio.create_task(relay())

    async def received(self, conn: Connection, text: str) -> None:
        await conn.send(nadoo.debug_answer(text))

    async def closed(self, conn: Connection) -> None:
        relay = conn.state.get("relay")
        if isinstance(relay, asyncio.Task):
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay


async def plugin_debug(request: web.Request) -> web.StreamResponse:
    endpoint = TraceEndpoint(request.app[REPLIES], request.match_info["execution_id"])
    return await serve(request, endpoint, flavour="nadoo-debug")


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, plugin_debug)
