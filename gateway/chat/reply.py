"""One reply: an upstream stream turned into numbered canonical events.

    ReplyStarted, (TextDelta | ReasoningDelta)*, ReplyFinished | ReplyFailed

`seq` counts from 0 within the reply, one number per event whatever its kind.
Upstream failures become a `ReplyFailed` carrying the text streamed so far;
cancellation is not caught here (the caller decides what a cancelled reply
means, and numbers its ending after `last_seq`), but the upstream request is
always closed on the way out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from gateway.errors import GatewayError
from gateway.events import (
    Event,
    ReasoningDelta,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    Usage,
)
from gateway.upstream import ReplyStream


def last_seq(seq: int, event: Event) -> int:
    """The reply's highest `seq` once `event` is sent: an ending the caller makes up
    (a stop, a crash) takes `last_seq + 1`, new whatever kinds of event came before
    (reasoning, status and sources are numbered too, not only text)."""
    if isinstance(event, ReplyEvent) and event.seq > seq:
        return event.seq
    return seq


def estimate_tokens(chars: int) -> int:
    # About four characters a token for English text; only used when the
    # upstream reports no usage.
    return (chars + 3) // 4


async def reply_events(
    stream: ReplyStream,
    *,
    chat_id: str | None,
    message_id: str,
    user_id: str,
    parent_id: str | None,
    model: str,
    prompt_chars: int,
) -> AsyncGenerator[Event, None]:
    started_wall = time.time()
    started = time.monotonic()
    seq = 0
    parts: list[str] = []
    usage: Usage | None = None
    finish_reason = "stop"
    try:
        yield ReplyStarted(chat_id, message_id, seq, user_id, parent_id, model, started_wall)
        try:
            async for chunk in stream:
                if chunk.reasoning:
                    seq += 1
                    yield ReasoningDelta(chat_id, message_id, seq, chunk.reasoning)
                if chunk.text:
                    parts.append(chunk.text)
                    seq += 1
                    yield TextDelta(chat_id, message_id, seq, chunk.text)
                if chunk.finish_reason:
                    finish_reason = chunk.finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
        except GatewayError as exc:
            seq += 1
            yield ReplyFailed(chat_id, message_id, seq, exc.code, exc.message, "".join(parts))
            return
    finally:
        await stream.aclose()
    content = "".join(parts)
    if usage is None:
        usage = Usage(estimate_tokens(prompt_chars), estimate_tokens(len(content)), estimated=True)
    seq += 1
    yield ReplyFinished(
        chat_id, message_id, seq, content, usage, finish_reason, time.monotonic() - started
    )
