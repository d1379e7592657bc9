"""One reply: an upstream stream turned into numbered canonical events.

    ReplyStarted, (TextDelta | ReasoningDelta | ToolCallDelta)*, ReplyFinished | ReplyFailed

`seq` counts from 0 within the reply, one number per event whatever its kind.
A chat's reply (`split_reasoning`) has its reasoning cut from its text
(`reasoning.py`: `<think>` tags and the like), its items numbered for Open
WebUI's `output`, and its text trimmed as Open WebUI trims it; a pure API reply
is the upstream's text as it came, and the model's tool calls (`ToolCallDelta`;
its request offered the tools, or the model made them anyway: relayed as made).
A chat's request offers none, and a call a model makes anyway has nowhere to be
shown or stored: it is not relayed.
Upstream failures become a `ReplyFailed` carrying the text streamed so far;
cancellation is not caught here (the caller decides what a cancelled reply
means, and numbers its ending after `last_seq`), but the upstream request is
always closed on the way out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from gateway.chat.reasoning import BREAK, REASONING, Output, Splitter
from gateway.errors import GatewayError
from gateway.events import (
    Event,
    MessageEvent,
    ReasoningDelta,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    TextDelta,
    ToolCallDelta,
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
    split_reasoning: bool = False,
) -> AsyncGenerator[Event, None]:
    # One generator for the whole reply, its loop inline: this runs once per
    # upstream chunk of every reply, and a helper call or a list per chunk
    # showed in the benches (bench/RESULTS.md, renovation step 4).
    started_wall = time.time()
    started = time.monotonic()
    seq = 0
    parts: list[str] = []
    call_chars = 0  # the tool calls' arguments, output as the text is
    usage: Usage | None = None
    finish_reason = "stop"
    split = _Split(chat_id, message_id) if split_reasoning else None
    try:
        yield ReplyStarted(chat_id, message_id, seq, user_id, parent_id, model, started_wall)
        try:
            async for chunk in stream:
                if split is not None:
                    for event in split.chunk(chunk.reasoning, chunk.text, seq):
                        seq = event.seq
                        yield event
                else:
                    if chunk.reasoning:
                        seq += 1
                        yield ReasoningDelta(chat_id, message_id, seq, chunk.reasoning)
                    if chunk.text:
                        parts.append(chunk.text)
                        seq += 1
                        yield TextDelta(chat_id, message_id, seq, chunk.text)
                    for call in chunk.tool_calls:
                        call_chars += len(call.arguments)
                        seq += 1
                        yield ToolCallDelta(
                            chat_id,
                            message_id,
                            seq,
                            call.index,
                            call.arguments,
                            call.call_id,
                            call.name,
                            call.extra,
                        )
                if chunk.finish_reason:
                    finish_reason = chunk.finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
            if split is not None:
                for event in split.close(seq):
                    seq = event.seq
                    yield event
        except GatewayError as exc:
            seq += 1
            text = "".join(split.parts if split is not None else parts)
            yield ReplyFailed(chat_id, message_id, seq, exc.code, exc.message, text)
            return
    finally:
        await stream.aclose()
    output = None
    if split is not None:
        content = split.output.content()
        output = split.output.items() if split.output.has_reasoning else None
    else:
        content = "".join(parts)
    if usage is None:
        completion = estimate_tokens(len(content) + call_chars)
        usage = Usage(estimate_tokens(prompt_chars), completion, estimated=True)
    elapsed = time.monotonic() - started
    yield ReplyFinished(
        chat_id, message_id, seq + 1, content, usage, finish_reason, elapsed, output=output
    )


_Piece = TextDelta | ReasoningDelta | MessageEvent


class _Split:
    """A chat reply's pieces as events: reasoning apart from text, each numbered with
    its Open WebUI `output` item (`reasoning.py`)."""

    def __init__(self, chat_id: str | None, message_id: str) -> None:
        self._chat_id = chat_id
        self._message_id = message_id
        self.splitter = Splitter()
        self.output = Output(message_id)
        self.parts: list[str] = []  # the text, as streamed

    def chunk(self, reasoning: str, text: str, seq: int) -> list[_Piece]:
        events: list[_Piece] = []
        if reasoning:
            # As Open WebUI: a provider that sends its reasoning apart has no tags.
            self.splitter.reasoning_tags = False
            seq = self._reasoning(reasoning, True, seq, events)
        if text:
            self._pieces(self.splitter.feed(text), seq, events)
        return events

    def close(self, seq: int) -> list[_Piece]:
        events: list[_Piece] = []
        self._pieces(self.splitter.close(), seq, events)
        return events

    def _pieces(self, pieces: list[tuple[str, str]], seq: int, events: list[_Piece]) -> int:
        for kind, text in pieces:
            if kind == BREAK:
                self.output.brk()
            elif kind == REASONING:
                seq = self._reasoning(text, False, seq, events)
            else:
                item, send = self.output.text(text)
                seq = self._done(seq, events)
                self.parts.append(text)
                if send:
                    seq += 1
                    events.append(TextDelta(self._chat_id, self._message_id, seq, send, item))
        return seq

    def _reasoning(self, text: str, provider: bool, seq: int, events: list[_Piece]) -> int:
        item, send = self.output.reasoning(text, provider)
        seq = self._done(seq, events)
        seq += 1
        events.append(ReasoningDelta(self._chat_id, self._message_id, seq, send, item))
        return seq

    def _done(self, seq: int, events: list[_Piece]) -> int:
        """A reasoning item the web app shows has ended: its whole text and duration
        (Open WebUI's `response.output_item.done`)."""
        for index, item in self.output.take_done():
            seq += 1
            done = {"type": "response.output_item.done", "output_index": index, "item": item}
            events.append(
                MessageEvent(self._chat_id, self._message_id, seq, "response:completion", done)
            )
        return seq
