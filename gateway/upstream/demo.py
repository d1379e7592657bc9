"""The built-in demo model: a deterministic echo, so a fresh install can chat.

It is named as a demo everywhere it shows (id `gateway-demo`), streams its
reply one word at a time with a small pause, and needs no network.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.events import Usage
from gateway.upstream import Chunk, ModelInfo

DEMO_MODEL_ID = "gateway-demo"
_STARTED = int(time.time())
_QUOTE_CHARS = 200


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                parts = [p.get("text", "") for p in content if isinstance(p, dict)]
                return " ".join(part for part in parts if isinstance(part, str))
    return ""


def _task_answer(prompt: str) -> str | None:
    """The chat's background tasks (`chat/background.py`) get JSON of the kind a
    model writes, so the demo shows titles, tags and follow-ups too."""
    first, _, rest = prompt.partition("\n")
    question = next(
        (line[len("USER: ") :] for line in rest.splitlines() if line.startswith("USER: ")), ""
    )
    words = " ".join(question.split()[:4]) or "Demo chat"
    if first == "Task: title":
        return json.dumps({"title": f"💬 {words}"}, ensure_ascii=False)
    if first == "Task: tags":
        return json.dumps({"tags": ["Demo"]})
    if first == "Task: follow-ups":
        asks = ["What can this gateway do?", "How do I connect a real model?"]
        return json.dumps({"follow_ups": asks})
    return None


def demo_reply(messages: list[dict[str, Any]]) -> str:
    task = _task_answer(_last_user_text(messages))
    if task is not None:
        return task
    said = " ".join(_last_user_text(messages).split())
    if len(said) > _QUOTE_CHARS:
        said = said[:_QUOTE_CHARS] + "…"
    return (
        f'This is the gateway\'s built-in demo model, not a real AI. You said: "{said}". '
        "Set OPENAI_API_BASE_URL to an OpenAI-compatible server to chat with a real model."
    )


def _count(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


class DemoUpstream:
    name = "demo"

    def __init__(self, token_delay_s: float) -> None:
        self._delay_s = token_delay_s

    async def list_models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(DEMO_MODEL_ID, "Gateway demo (echo, not an AI)", "gateway", _STARTED)]

    async def open(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> DemoStream:
        return DemoStream(demo_reply(messages), self._delay_s, messages)


class DemoStream:
    def __init__(self, text: str, delay_s: float, messages: list[dict[str, Any]]) -> None:
        # Words with their leading space, so the pieces join back exactly.
        self._pieces = re.findall(r"\s*\S+", text)
        self._delay_s = delay_s
        self._prompt_tokens = sum(_count(str(m.get("content") or "")) for m in messages)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Chunk]:
        for piece in self._pieces:
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield Chunk(text=piece)
        usage = Usage(self._prompt_tokens, len(self._pieces))
        yield Chunk(finish_reason="stop", usage=usage)

    async def aclose(self) -> None:
        return None
