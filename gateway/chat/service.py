"""The chat service: runs Commands against the upstreams (and, later, the store)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

from gateway.auth import Principal
from gateway.chat.reply import reply_events
from gateway.commands import Ask
from gateway.events import Event
from gateway.upstream.router import ModelRouter


def _prompt_chars(ask: Ask) -> int:
    return sum(len(str(message.get("content") or "")) for message in ask.messages)


class ChatService:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    async def open_reply(self, principal: Principal, ask: Ask) -> AsyncGenerator[Event, None]:
        """Pure API mode: nothing stored; the caller consumes the events.

        Raises before any event when the model is unknown or the upstream
        refuses, so the caller can still answer with a plain HTTP error.
        """
        upstream = await self.router.resolve(ask.model)
        stream = await upstream.open(ask.model, ask.messages, ask.params)
        return reply_events(
            stream,
            chat_id=None,
            message_id=f"chatcmpl-{uuid.uuid4().hex}",
            user_id=principal.user_id,
            parent_id=None,
            model=ask.model,
            prompt_chars=_prompt_chars(ask),
        )
