"""A short end-to-end chat on each flavour, as its own clients do it, then cleaned up.

    chat:openai      POST /v1/chat/completions (SSE) → text and [DONE]; nothing is stored
    chat:openwebui   Socket.IO (websocket) + POST /api/chat/completions with the socket's
                     sid → `events` until chat:active false; the chat is deleted after
    chat:nadoo       WS /ws/chat/doctor-…?token= {"type":"chat"} → text-delta … response_end;
                     the chat is deleted after
    chat:ragflow     a "gateway doctor …" assistant, WS /v1/ws/chat?token= {"type":"chat"}
                     → answers … {"code":0,"data":true}; its sessions and it are deleted after

What the doctor creates is named "gateway doctor" or "doctor-…", and deleted
even when the chat fails; a delete that fails is a fault of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from gateway.doctor.http import chunk_content
from gateway.doctor.report import Fault, Skip
from gateway.doctor.sockets import socketio_client
from gateway.doctor.target import Findings, Target, doctor_name, excerpt
from gateway.flavours.sse import SSEParser

QUESTION = "gateway doctor: please answer with a short greeting"


async def _request(target: Target, method: str, path: str, body: Any = None) -> Any:
    """A JSON call with the token; a non-2xx answer is a fault naming the call."""
    url = target.url(path)
    async with target.session.request(method, url, json=body, headers=target.headers()) as resp:
        text = await resp.text(errors="replace")
        if resp.status >= 300:
            raise Fault(f"{method} {path}: {resp.status} {excerpt(text)}")
    return json.loads(text) if text else None


async def _cleaning(
    work: Callable[[list[Callable[[], Awaitable[None]]]], Awaitable[str]],
) -> str:
    """Run `work(cleanups)`, then every cleanup it registered, newest first."""
    cleanups: list[Callable[[], Awaitable[None]]] = []
    try:
        detail = await work(cleanups)
    finally:
        problems = []
        for cleanup in reversed(cleanups):
            try:
                await cleanup()
            except (Fault, aiohttp.ClientError, OSError, TimeoutError) as exc:
                problems.append(str(exc))
    if problems:
        raise Fault(f"{detail}, but cleaning up failed: {'; '.join(problems)}")
    return detail


def _delete_chat(target: Target, chat_id: str) -> Callable[[], Awaitable[None]]:
    async def delete() -> None:
        await _request(target, "DELETE", f"/api/v1/chats/{chat_id}")

    return delete


# -- openai ------------------------------------------------------------------------------
async def chat_openai(target: Target, found: Findings) -> str:
    found.require_token(target)
    body = {
        "model": found.model,
        "stream": True,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    url = target.url("/v1/chat/completions")
    text, done = "", False
    async with target.session.post(url, json=body, headers=target.headers()) as resp:
        if resp.status != 200:
            raise Fault(f"POST /v1/chat/completions: {resp.status} {excerpt(await resp.text())}")
        parser = SSEParser()
        async for piece in resp.content.iter_any():
            for payload in parser.feed(piece):
                if payload == "[DONE]":
                    done = True
                elif payload.startswith('{"error"'):
                    # The gateway's failure mid-stream: {"error": {message, type, code}}.
                    raise Fault(f"the reply failed: {excerpt(payload)}")
                else:
                    text += chunk_content(payload)
    if not done:
        raise Fault(f"the stream ended without [DONE] after {len(text)} characters")
    if not text.strip():
        raise Fault("the reply was empty")
    return f"{found.model}: {len(text)} characters, then [DONE]"


# -- openwebui ---------------------------------------------------------------------------
async def chat_openwebui(target: Target, found: Findings) -> str:
    found.require_token(target)
    # The web app polls when the gateway offers nothing else.
    transport = "polling" if found.socketio_polling_only else "websocket"
    if transport == "websocket":
        found.require_upgrade("socket.io")
    elif not found.polling_sticky:
        raise Skip("Socket.IO polling is not sticky (see socketio-polling)")
    model = found.model or ""
    events: list[dict[str, Any]] = []
    changed = asyncio.Event()

    async def on_events(data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            events.append(data)
            changed.set()

    async def work(cleanups: list[Callable[[], Awaitable[None]]]) -> str:
        async with socketio_client(target, on_events, transport) as client:
            answer = await _request(
                target, "POST", "/api/chat/completions", _turn(client.get_sid(), model)
            )
            chat_id = answer.get("chat_id") if isinstance(answer, dict) else None
            if not isinstance(chat_id, str):
                raise Fault(f"POST /api/chat/completions answered {excerpt(json.dumps(answer))}")
            cleanups.append(_delete_chat(target, chat_id))
            mine = await _until_inactive(events, changed, chat_id)
        text = "".join(
            str(event["data"]["data"].get("content", ""))
            for event in mine
            if event["data"]["type"] == "chat:message:delta"
        )
        errors = [e for e in mine if e["data"]["type"] == "chat:message:error"]
        if errors:
            raise Fault(f"the reply failed: {excerpt(json.dumps(errors[0]['data']['data']))}")
        if not text.strip():
            raise Fault("the reply was empty")
        return f"{model} over {transport}: {len(text)} characters, until chat:active false"

    return await _cleaning(work)


def _turn(session_id: str, model: str) -> dict[str, Any]:
    """A new chat's first turn, as Open WebUI's web app posts it (frontend mode)."""
    user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
    return {
        "stream": True,
        "model": model,
        "params": {},
        "session_id": session_id,
        "id": reply_id,
        "message_ids": [{"model_id": model, "message_id": reply_id, "modelIdx": 0}],
        "parent_id": None,
        "user_message": {
            "id": user_id,
            "parentId": None,
            "childrenIds": [],
            "role": "user",
            "content": QUESTION,
            "timestamp": int(time.time()),
            "models": [model],
        },
    }


async def _until_inactive(
    events: list[dict[str, Any]], changed: asyncio.Event, chat_id: str
) -> list[dict[str, Any]]:
    """The chat's events up to `chat:active {active: false}` (its reply ended)."""
    while True:
        mine = [event for event in events if event.get("chat_id") == chat_id]
        if any(
            event["data"]["type"] == "chat:active"
            and event["data"].get("data") == {"active": False}
            for event in mine
        ):
            return mine
        changed.clear()
        await changed.wait()


# -- nadoo -------------------------------------------------------------------------------
async def chat_nadoo(target: Target, found: Findings) -> str:
    found.require_token(target)
    found.require_upgrade("nadoo")

    async def work(cleanups: list[Callable[[], Awaitable[None]]]) -> str:
        url = target.url(f"/ws/chat/{doctor_name()}", with_token=True)
        text = ""
        async with target.session.ws_connect(url, heartbeat=None) as ws:
            await ws.send_str(
                json.dumps({"type": "chat", "content": QUESTION, "application_id": found.model})
            )
            while True:
                frame = await _frame(ws, target.options.timeout)
                kind = frame.get("type")
                if kind == "response_start" and isinstance(frame.get("chat_id"), str):
                    # The chat exists from here: delete it even if the reply never ends.
                    cleanups.append(_delete_chat(target, frame["chat_id"]))
                elif kind == "text-delta":
                    text += str(frame.get("text", ""))
                elif kind == "error":
                    raise Fault(f"the gateway answered an error frame: {frame.get('message')}")
                elif kind == "response_end":
                    break
        if not str(frame.get("full_response", "")).strip():
            raise Fault("response_end carried an empty full_response")
        return f"{len(text)} characters in text-delta frames, then response_end"

    return await _cleaning(work)


async def _frame(ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout_s)
    if msg.type != aiohttp.WSMsgType.TEXT:
        reason = f"close code {ws.close_code}" + (f" ({msg.extra})" if msg.extra else "")
        raise Fault(f"the WebSocket closed before the reply ended: {reason}")
    frame = json.loads(msg.data)
    if not isinstance(frame, dict):
        raise Fault(f"unexpected frame {excerpt(msg.data)!r}")
    return frame


# -- ragflow -----------------------------------------------------------------------------
async def chat_ragflow(target: Target, found: Findings) -> str:
    found.require_token(target)
    found.require_upgrade("ragflow")

    async def work(cleanups: list[Callable[[], Awaitable[None]]]) -> str:
        created = await _ragflow(
            target,
            "POST",
            "/ragflow/api/v1/chats",
            {"name": f"gateway doctor {doctor_name()}", "llm": {"model_name": found.model}},
        )
        assistant_id = str(created["id"])

        async def delete_assistant() -> None:
            # Its sessions are chats of their own: delete them first.
            await _ragflow(target, "DELETE", f"/ragflow/api/v1/chats/{assistant_id}/sessions")
            await _ragflow(target, "DELETE", "/ragflow/api/v1/chats", {"ids": [assistant_id]})

        cleanups.append(delete_assistant)
        question = {"type": "chat", "chat_id": assistant_id, "question": QUESTION}
        answers: list[str] = []
        url = target.url("/v1/ws/chat", with_token=True)
        async with target.session.ws_connect(url, heartbeat=None) as ws:
            await ws.send_str(json.dumps(question))
            while True:
                frame = await _frame(ws, target.options.timeout)
                if frame.get("code") != 0:
                    raise Fault(
                        f"the gateway answered code {frame.get('code')}: {frame.get('message')}"
                    )
                if frame.get("data") is True:
                    break
                data = frame.get("data")
                if isinstance(data, dict) and isinstance(data.get("answer"), str):
                    answers.append(data["answer"])
        if not "".join(answers).strip():
            raise Fault("the answer was empty")
        return f"{len(answers)} answer frames, then data: true"

    return await _cleaning(work)


async def _ragflow(target: Target, method: str, path: str, body: Any = None) -> Any:
    """RAGFlow's envelope: HTTP 200 and `code` 0, else a fault with its message."""
    envelope = await _request(target, method, path, body)
    if not isinstance(envelope, dict) or envelope.get("code") != 0:
        raise Fault(f"{method} {path}: {excerpt(json.dumps(envelope))}")
    return envelope.get("data")
