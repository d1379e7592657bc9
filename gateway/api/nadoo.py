"""Nadoo's WebSocket endpoints and `GET /ws/stats` (docs/PROTOCOLS.md §4), at the root
and under `/api`.

    /ws/chat/{session_id}          chat in a session of the token's user; its replies go
                                   to every socket of that user's session (room
                                   `session:<user id>:<id>`), typing to the others;
                                   `resume` follows one of the user's replies again
    /ws/notifications/{user_id}    the token's own user only; notifications from the core
    /ws/workspaces/{workspace_id}  joined/left and members' broadcasts to the others
    GET /ws/stats                  connections, sessions, users (all transports); the
                                   details only of the asker's own unless an admin

A chat message names a model with `application_id` (a model id; anything
else gets the default model).  A bad or missing token: the socket is
accepted, then closed 1008 "Invalid token", as Nadoo documents.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway import rooms
from gateway.api.common import principal_of
from gateway.application.keys import REALTIME, REPLIES
from gateway.application.realtime import Seat
from gateway.application.replies import Replies, StopTarget
from gateway.commands import MAX_ID_CHARS, Broadcast, Cancel, Ping, Resume, Say, Typing
from gateway.errors import AuthError, BadRequest, Forbidden, GatewayError
from gateway.events import Event, UserJoined, UserLeft, UserTyping, WorkspaceEvent
from gateway.flavours import nadoo
from gateway.transports.websocket import Connection, serve

INVALID_TOKEN = "Invalid token"


def _reason(error: GatewayError) -> str:
    # Nadoo's clients look for this exact reason on 1008.
    return INVALID_TOKEN if isinstance(error, AuthError) else error.message


class _NadooEndpoint:
    """What the three Nadoo sockets share: presence, encoding, errors, no refusal frames."""

    kind = ""

    def refused(self, error: GatewayError) -> list[str]:
        return []

    def failed(self, error: GatewayError) -> list[str]:
        return [nadoo.error_for(error, time.time())]

    def encode(self, conn: Connection, event: Event) -> list[str]:
        return self._encoder(conn).encode(event)

    @staticmethod
    def _encoder(conn: Connection) -> nadoo.Encoder:
        encoder = conn.state.get("encoder")
        assert isinstance(encoder, nadoo.Encoder)
        return encoder

    def _seat(self, conn: Connection, session: str | None = None) -> None:
        # `?seq=1`: reply frames carry their seq, for `resume` (the gateway's own).
        conn.state["encoder"] = nadoo.Encoder(conn.id, seq=conn.query.get("seq") == "1")
        conn.realtime.seat(conn.id, Seat(self.kind, conn.user_id, session))

    async def closed(self, conn: Connection) -> None:
        conn.realtime.unseat(conn.id)


class ChatEndpoint(_NadooEndpoint):
    kind = "nadoo-chat"

    def __init__(self, replies: Replies, session_id: str) -> None:
        self.replies = replies
        self.session_id = session_id
        # A session is its user's: another user naming the same id gets a session
        # of their own (SECURITY.md, "Rooms and sessions").
        self.room = ""  # the user's own session room, once the token names the user

    async def opened(self, conn: Connection) -> None:
        self.room = rooms.session(conn.user_id, self.session_id)
        await conn.join(self.room)
        assert conn.principal is not None
        conn.pace(self.replies.attach)
        self._seat(conn, self.session_id)
        await conn.send(nadoo.connected(self.session_id, conn.user_id, time.time()))

    async def received(self, conn: Connection, text: str) -> None:
        command = nadoo.decode_chat(text, time.time())
        assert conn.principal is not None
        if isinstance(command, Say):
            await self.replies.say(conn.principal, command, rooms=(self.room,))
        elif isinstance(command, Ping):
            await conn.send(nadoo.pong(time.time()))
        elif isinstance(command, Typing):
            conn.publish([self.room], UserTyping(self.session_id, conn.user_id, conn.id))
        elif isinstance(command, Cancel):
            # The user's replies in this session, whichever socket (and replica) asked.
            await self.replies.stop(StopTarget(conn.user_id, room=self.room))
        elif isinstance(command, Resume):
            with conn.holding([message_id for message_id, _ in command.after]):
                for message_id, after in command.after:
                    attached = await self.replies.attach(
                        conn.principal, message_id, after, command.chat_id
                    )
                    conn.resume(attached, self._encoder(conn).encode)

    async def closed(self, conn: Connection) -> None:
        await super().closed(conn)
        conn.publish([self.room], UserLeft(self.room, conn.user_id, conn.id))


class NotificationsEndpoint(_NadooEndpoint):
    kind = "nadoo-notifications"

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    async def opened(self, conn: Connection) -> None:
        if conn.user_id != self.user_id:
            raise Forbidden("The user_id in the path is not the token's user")
        await conn.join(rooms.notify(conn.user_id))
        self._seat(conn)

    async def received(self, conn: Connection, text: str) -> None:
        nadoo.decode_notifications(text, time.time())  # ping is all it accepts
        await conn.send(nadoo.pong(time.time()))


class WorkspaceEndpoint(_NadooEndpoint):
    kind = "nadoo-workspace"

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self.room = rooms.workspace(workspace_id)

    async def opened(self, conn: Connection) -> None:
        await conn.join(self.room)
        self._seat(conn, f"workspace_{self.workspace_id}")
        conn.publish([self.room], UserJoined(self.room, conn.user_id, conn.id))

    async def received(self, conn: Connection, text: str) -> None:
        command = nadoo.decode_workspace(text, time.time())
        if isinstance(command, Ping):
            await conn.send(nadoo.pong(time.time()))
        elif isinstance(command, Broadcast):
            event = WorkspaceEvent(
                self.workspace_id, conn.user_id, command.type, command.data, conn.id
            )
            conn.publish([self.room], event)

    async def closed(self, conn: Connection) -> None:
        await super().closed(conn)
        conn.publish([self.room], UserLeft(self.room, conn.user_id, conn.id))


def _path_id(request: web.Request, name: str) -> str:
    """A session's or workspace's id from the path, at most MAX_ID_CHARS (400 past it,
    before the upgrade)."""
    value = request.match_info[name]
    if len(value) > MAX_ID_CHARS:
        raise BadRequest(f"{name} has at most {MAX_ID_CHARS} characters")
    return value


async def chat(request: web.Request) -> web.StreamResponse:
    endpoint = ChatEndpoint(request.app[REPLIES], _path_id(request, "session_id"))
    return await serve(request, endpoint, flavour="nadoo", reason_for=_reason)


async def notifications(request: web.Request) -> web.StreamResponse:
    endpoint = NotificationsEndpoint(request.match_info["user_id"])
    return await serve(request, endpoint, flavour="nadoo", reason_for=_reason)


async def workspaces(request: web.Request) -> web.StreamResponse:
    endpoint = WorkspaceEndpoint(_path_id(request, "workspace_id"))
    return await serve(request, endpoint, flavour="nadoo", reason_for=_reason)


async def ws_stats(request: web.Request) -> web.Response:
    """Every realtime connection of the gateway, counted; other users' session and user
    ids only for admins."""
    principal = await principal_of(request)
    return web.json_response(request.app[REALTIME].stats(principal))


def add_routes(app: web.Application) -> None:
    for prefix in ("", "/api"):
        app.router.add_get(f"{prefix}/ws/chat/{{session_id}}", chat)
        app.router.add_get(f"{prefix}/ws/notifications/{{user_id}}", notifications)
        app.router.add_get(f"{prefix}/ws/workspaces/{{workspace_id}}", workspaces)
        app.router.add_get(f"{prefix}/ws/stats", ws_stats)
