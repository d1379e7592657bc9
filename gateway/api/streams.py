"""Event streams for clients that have only SSE (docs/PROTOCOLS.md §5):

    GET /api/v1/chats/{chat_id}/messages/{message_id}/stream
        one reply of the user's, running or finished, from after `Last-Event-ID`
        (or `?after=<seq>`; neither: from its start); 204 when there is nothing
        more to send (the client has its end), 404 when it is not the user's
    GET /api/v1/events
        every `events` envelope a Socket.IO socket of the user would get; a fresh
        stream first gets the text so far of each running reply, a resumed one
        (`Last-Event-ID`, or `?last_event_id=`) what it missed

Both: `text/event-stream`, `X-Accel-Buffering: no`, `Cache-Control: no-cache`,
a comment every GATEWAY_SSE_KEEPALIVE_S of silence; the token as for any HTTP
request, or in `?token=` (EventSource cannot set a header; SECURITY.md says
what that costs); at most GATEWAY_MAX_FOLLOWERS_PER_USER streams per user and
replica (429); closed when the token's access ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable

from aiohttp import web

from gateway import rooms
from gateway.application.keys import AUTHENTICATOR, ORIGINS, REALTIME, REPLIES, SETTINGS
from gateway.application.realtime import Attached, Outbox, Overflow
from gateway.edge import access, metrics
from gateway.edge.auth import Principal, find_token
from gateway.edge.origins import grant_stream
from gateway.errors import CLIENT_GONE, BadRequest, NotFound
from gateway.events import Event
from gateway.flavours import mirror
from gateway.transports.sse import SSE_HEADERS, Keepalive


async def _principal(request: web.Request) -> Principal:
    token = find_token(request.headers, request.cookies, request.query)
    return await request.app[AUTHENTICATOR].authenticate(token)


def _last_event_id(request: web.Request, query_name: str) -> str | None:
    return request.headers.get("Last-Event-ID") or request.query.get(query_name)


async def reply_stream(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    chat_id = request.match_info["chat_id"]
    message_id = request.match_info["message_id"]
    raw = _last_event_id(request, "after")
    after = mirror.after_of(raw) if raw is not None else -1
    if after is None:
        raise BadRequest("Last-Event-ID (or ?after=) must be the seq of an event of this stream")
    replies = request.app[REPLIES]
    with replies.stream(principal):
        attached = await replies.attach(principal, message_id, after, chat_id)
        try:
            if attached.finished:
                return web.Response(status=204, headers={"Cache-Control": "no-cache"})
            return await _write(request, principal, attached.events, None)
        finally:
            attached.close()


async def user_events(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    cursor = mirror.cursor_of(_last_event_id(request, "last_event_id"))
    replies, realtime = request.app[REPLIES], request.app[REALTIME]
    with replies.stream(principal):
        opened = mirror.Cursor(int(time.time() * 1000))
        outbox = realtime.subscribe([rooms.user(principal.user_id)])
        outbox.note_starts()  # for a catch-up (`_resumed`)
        # A reply that outgrows the stream's outbox goes on from the replay buffer.
        realtime.pace(outbox, principal, replies.attach)
        resuming = []
        try:
            await realtime.watching(outbox.rooms)
            for attached in await _resumed(request, principal, outbox, cursor):
                resuming.append(realtime.resume(outbox, attached))
            return await _write(request, principal, _drained(outbox), cursor or opened)
        finally:
            for task in resuming:
                task.cancel()
            realtime.unsubscribe(outbox)


async def _resumed(
    request: web.Request, principal: Principal, outbox: Outbox, cursor: mirror.Cursor | None
) -> list[Attached]:
    replies = request.app[REPLIES]
    if cursor is None:
        return await replies.catch_up(principal, outbox)
    outbox.stop_noting()
    found = []
    for kept in await replies.kept(principal, settled=True):
        after = cursor.wants(kept.message_id, kept.started_ms, kept.ended_ms is None)
        if after is None:
            continue
        with contextlib.suppress(NotFound):
            found.append(await replies.attach(principal, kept.message_id, after, kept.chat_id))
    return found


async def _drained(outbox: Outbox) -> AsyncGenerator[Event, None]:
    try:
        while events := await outbox.batch():
            for event in events:
                yield event
            outbox.done()
    except Overflow:
        return


async def _write(
    request: web.Request,
    principal: Principal,
    events: AsyncGenerator[Event, None],
    cursor: mirror.Cursor | None,
) -> web.StreamResponse:
    """The events as SSE until they end, the client leaves, its access ends or the
    replica stops."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    grant_stream(request, response, request.app[ORIGINS])
    keepalive_s = request.app[SETTINGS].sse_keepalive_s
    handler = asyncio.current_task()
    assert handler is not None
    ended: list[str] = []

    def access_ended(why: str) -> None:
        if not ended:  # (once: a stop and an access end may both come)
            ended.append(why)
            handler.cancel()

    realtime = request.app[REALTIME]
    # Ended as when its access ends once the replica stops (`drain`): EventSource
    # reconnects, through the balancer, elsewhere.
    with realtime.streaming(access_ended):
        lease = realtime.hold(principal, access_ended)
        counted: Callable[[], None] | None = None
        try:
            async with contextlib.aclosing(events):
                try:
                    await response.prepare(request)
                except ConnectionError:
                    return web.Response(status=CLIENT_GONE)  # it left as the headers went out
                flavour = "mirror" if cursor is not None else "openwebui"
                counted = access.connection_opened("sse", flavour, principal.user_id)
                stall_s = request.app[SETTINGS].stalled_client_s
                watch = Keepalive(
                    response, keepalive_s, transport=request.transport, stall_s=stall_s
                )
                async with watch as keepalive:
                    async for event in events:
                        if cursor is None:
                            frame = mirror.reply_frames(event)[0]
                        else:
                            cursor.saw(event)
                            frame = mirror.frames(event, cursor.id())
                        if frame:
                            await response.write(frame)
                            keepalive.wrote()
                            metrics.HOT.delivered_sse += 1
                    await response.write_eof()
        except ConnectionResetError:
            pass  # the client left
        except asyncio.CancelledError:
            if not ended:
                raise
            # Its access ended, or the replica stops, wherever it was: it is over.
            handler.uncancel()
        finally:
            lease.release()
            if counted is not None:
                counted()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/chats/{chat_id}/messages/{message_id}/stream", reply_stream)
    app.router.add_get("/api/v1/events", user_events)
