"""RAGFlow's WebSocket chat (docs/PROTOCOLS.md §3), for WeChat mini-programs and the like.

    /v1/ws/chat  (and /ragflow/v1/ws/chat)
        client {"type": "chat", "chat_id", "question", "stream"?, "session_id"?,
                "answer_mode"?}; many questions on one connection
    /api/v1/ws/chats/{chat_id}/completions  (and under /ragflow)
        client {"question", "session_id"?, ...}: the path names the assistant
    /v1/ws/health  (and /ragflow/v1/ws/health)
        no auth: a greeting, then each message echoed with a timestamp

Answers are the HTTP API's chunks as text frames, each question ending with
`{"code": 0, "message": "", "data": true}`; `answer` is a delta by default
here (what the WebSocket docs' clients append; `GATEWAY_RAGFLOW_WS_ANSWER_MODE`).
A question without `session_id` opens a session and is answered; the
chunks carry the new `session_id`.  `{"type": "resume", "message_id", "after",
"session_id"?}` sends an answer's chunks again from after the event numbered
`after` (the cumulative `answer` stays right).  A bad token: one code-109 frame, then
close 1008.  A bad frame: an error frame, the connection stays open.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.application.assistants import Assistants
from gateway.application.keys import ASSISTANTS, REPLIES, SETTINGS
from gateway.application.realtime import Seat
from gateway.application.replies import Replies
from gateway.commands import Resume
from gateway.errors import AuthError, GatewayError
from gateway.events import Event
from gateway.flavours import ragflow as codec
from gateway.transports.websocket import Connection, serve


class ChatSocket:
    def __init__(
        self,
        assistants: Assistants,
        replies: Replies,
        answer_mode: codec.AnswerMode,
        assistant_id: str | None = None,
    ) -> None:
        self.assistants = assistants
        self.replies = replies
        self.answer_mode = answer_mode
        # Set when the path names the assistant (/api/v1/ws/chats/{chat_id}/...).
        self.assistant_id = assistant_id

    def refused(self, error: GatewayError) -> list[str]:
        if isinstance(error, AuthError):
            return [codec.error_frame(codec.AUTHENTICATION_ERROR, codec.AUTH_REQUIRED)]
        return [codec.failure_frame(error)]

    async def opened(self, conn: Connection) -> None:
        if self.assistant_id is not None:
            assert conn.principal is not None
            await self.assistants.owned(conn.principal, self.assistant_id)
        # `?seq=1`: chunks carry their seq, for `resume` (the gateway's own).
        seq = conn.query.get("seq") == "1"
        conn.state["encoder"] = codec.AnswerEncoder(self.answer_mode, seq)
        await conn.join(conn.room)  # where the answers it asks for are published
        conn.realtime.seat(conn.id, Seat("ragflow", conn.user_id))
        assert conn.principal is not None
        conn.pace(self.replies.attach)

    async def received(self, conn: Connection, text: str) -> None:
        question = codec.decode_ws_frame(text, self.assistant_id)
        assert conn.principal is not None
        if isinstance(question, Resume):
            encoder = self._encoder(conn)
            with conn.holding([message_id for message_id, _ in question.after]):
                for message_id, after in question.after:
                    attached = await self.replies.attach(
                        conn.principal, message_id, after, question.chat_id
                    )
                    if not conn.resumes(message_id):  # (else its text goes on as it went)
                        encoder.expect(message_id, question.answer_mode)
                    conn.resume(attached, encoder.encode)
            return
        assistants = self.assistants
        assistant = await assistants.owned(conn.principal, question.assistant_id)
        if question.session_id is None:
            # A new session, stored with its first turn (one write, not two).
            session, history, stored = assistants.new_session(assistant), None, False
        else:
            session, history = await assistants.session_and_history(assistant, question.session_id)
            stored = True
        turn = await assistants.ask(
            conn.principal,
            assistant,
            session,
            question.question,
            rooms=(conn.room,),
            history=history,
            stored=stored,
        )
        self._encoder(conn).expect(turn.message_ids[0], question.answer_mode, question.stream)

    def failed(self, error: GatewayError) -> list[str]:
        return [codec.failure_frame(error)]

    def encode(self, conn: Connection, event: Event) -> list[str]:
        return self._encoder(conn).encode(event)

    async def closed(self, conn: Connection) -> None:
        conn.realtime.unseat(conn.id)

    @staticmethod
    def _encoder(conn: Connection) -> codec.AnswerEncoder:
        encoder = conn.state["encoder"]
        assert isinstance(encoder, codec.AnswerEncoder)
        return encoder


class HealthSocket:
    """No auth: proves a WebSocket reaches the gateway through whatever is in front."""

    def refused(self, error: GatewayError) -> list[str]:
        return []

    async def opened(self, conn: Connection) -> None:
        await conn.send(codec.HEALTHY)

    async def received(self, conn: Connection, text: str) -> None:
        await conn.send(codec.echo(text, time.time()))

    def failed(self, error: GatewayError) -> list[str]:
        return [codec.failure_frame(error)]

    def encode(self, conn: Connection, event: Event) -> list[str]:
        return []

    async def closed(self, conn: Connection) -> None:
        return None


async def chat(request: web.Request) -> web.StreamResponse:
    assistant_id = request.match_info.get("chat_id")
    mode = request.app[SETTINGS].ragflow_ws_answer_mode
    endpoint = ChatSocket(request.app[ASSISTANTS], request.app[REPLIES], mode, assistant_id)
    return await serve(request, endpoint, flavour="ragflow")


async def health(request: web.Request) -> web.StreamResponse:
    return await serve(request, HealthSocket(), flavour="ragflow", authenticate=False)


def add_routes(app: web.Application) -> None:
    for prefix in ("", "/ragflow"):
        app.router.add_get(f"{prefix}/v1/ws/chat", chat)
        app.router.add_get(f"{prefix}/v1/ws/health", health)
        app.router.add_get(f"{prefix}/api/v1/ws/chats/{{chat_id}}/completions", chat)
