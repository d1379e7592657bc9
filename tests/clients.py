"""Real clients the tests drive: the JS socket.io-client (node) and python-socketio.

Both record Open WebUI `events` as `{"t": <s>, "chat_id", "message_id", "type", "data"}`
so a test reads them the same way, and both can rebuild a reply's text.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import socketio

JS_DIR = Path(__file__).resolve().parent / "js"
SOCKETIO_PATH = "/ws/socket.io"


def ended(event: dict[str, Any]) -> bool:
    return event["type"] == "chat:active" and event["data"] == {"active": False}


def text_of(events: list[dict[str, Any]], message_id: str) -> str:
    """The reply as a client rebuilds it: deltas appended."""
    return "".join(
        e["data"]["content"]
        for e in events
        if e["message_id"] == message_id and e["type"] == "chat:message:delta"
    )


def content_of(events: list[dict[str, Any]], message_id: str) -> str:
    """The reply as the web app shows it: deltas appended, and a `chat:message` of
    it (its text so far, as a resume or a catch-up sends it) replacing the text.
    A socket that connects while its own reply starts may be caught up on it
    while it already gets it from its room: the deltas of that window come
    twice, and the snapshot between them is what keeps the text exact."""
    text = ""
    for e in events:
        if e["message_id"] != message_id:
            continue
        if e["type"] == "chat:message":
            text = e["data"]["content"]
        elif e["type"] == "chat:message:delta":
            text += e["data"]["content"]
    return text


def completion_of(events: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
    done = [e for e in events if e["message_id"] == message_id and e["type"] == "chat:completion"]
    assert len(done) == 1, [e["type"] for e in events]
    data: dict[str, Any] = done[0]["data"]
    return data


def _record(raw: dict[str, Any], t: float) -> dict[str, Any]:
    return {
        "t": t,
        "chat_id": raw["chat_id"],
        "message_id": raw["message_id"],
        "type": raw["data"]["type"],
        "data": raw["data"]["data"],
        # A socket that asked for seqs (`auth.seq`) gets each reply envelope's.
        "seq": raw.get("seq"),
    }


class PySocket:
    """python-socketio's AsyncClient, recording `events`."""

    def __init__(self) -> None:
        # Our own HTTP session: python-socketio leaks its own when a connect fails.
        self.http = aiohttp.ClientSession()
        self.client = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.client.on("events", self._on_event)

    async def _on_event(self, data: dict[str, Any]) -> None:
        self.events.append(_record(data, time.monotonic()))
        self._changed.set()

    async def connect(
        self,
        url: str,
        token: str | None,
        transports: list[str] | None = None,
        headers: dict[str, str] | None = None,
        path: str = SOCKETIO_PATH,
        auth: dict[str, Any] | None = None,
    ) -> PySocket:
        """`auth` adds to the handshake's `{token}` (`seq`, `resume`)."""
        handshake = {**({"token": token} if token else {}), **(auth or {})}
        try:
            await self.client.connect(
                url,
                socketio_path=path,
                auth=handshake or None,
                transports=transports or ["websocket"],
                headers=headers or {},
                wait_timeout=10,
            )
        except BaseException:
            await self.http.close()
            raise
        return self

    @property
    def sid(self) -> str:
        sid = self.client.get_sid()
        assert sid is not None
        return str(sid)

    async def wait_until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 20
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while not done(self.events):
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))
        return self.events

    async def wait_ended(self, count: int = 1, timeout_s: float = 20) -> list[dict[str, Any]]:
        return await self.wait_until(lambda events: sum(map(ended, events)) >= count, timeout_s)

    async def close(self) -> None:
        await self.client.disconnect()
        await self.http.close()


# The longest line the JS client may print (a finished 5 MB reply, JSON-escaped).
MAX_LINE_BYTES = 64 * 1024 * 1024


class JSSocket:
    """The npm `socket.io-client`, run with node (`tests/js/sio_client.mjs`)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(
        self,
        url: str,
        token: str,
        transports: str = "websocket",
        replies: int = 1,
        user_join: bool = False,
        auth_in_handshake: bool = True,
        timeout_ms: int = 20000,
        path: str = "/ws/socket.io",
        with_credentials: bool = False,
        insecure: bool = False,
    ) -> JSSocket:
        node = shutil.which("node")
        assert node is not None, "node is needed for the JS client tests"
        args = [
            str(JS_DIR / "sio_client.mjs"),
            "--url",
            url,
            "--token",
            token,
            "--transports",
            transports,
            "--replies",
            str(replies),
            "--timeout-ms",
            str(timeout_ms),
            "--auth-in-handshake",
            "1" if auth_in_handshake else "0",
        ]
        args += ["--path", path]
        if user_join:
            args.append("--user-join")
        if with_credentials:
            args.append("--with-credentials")
        if insecure:
            args.append("--insecure")
        self.proc = await asyncio.create_subprocess_exec(
            # A line per event: a finished reply's line holds its whole text.
            node, *args, cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, limit=MAX_LINE_BYTES
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        await self.wait_for("connected")
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))
            self._changed.set()
        self._changed.set()

    async def wait_for(self, kind: str, timeout_s: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines:
                if line["kind"] == kind:
                    return line
                if line["kind"] in ("error", "timeout") and kind != line["kind"]:
                    raise AssertionError(f"JS client: {line}")
            if self._reader is not None and self._reader.done():
                raise AssertionError(f"JS client exited before {kind!r}: {self.lines}")
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))

    @property
    def sid(self) -> str:
        sid = next(line["sid"] for line in self.lines if line["kind"] == "connected")
        return str(sid)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [
            _record(line["data"], line["t"] / 1000)
            for line in self.lines
            if line["kind"] == "event"
        ]

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


def turn_body(
    session_id: str,
    content: str,
    model: str = "fake-model",
    *,
    chat_id: str | None = None,
    parent_id: str | None = None,
    user_message_id: str | None = None,
    assistant_id: str | None = None,
    models: list[str] | None = None,
) -> dict[str, Any]:
    """A `/api/chat/completions` body as Open WebUI 0.12's web app sends it."""
    user_id = user_message_id or str(uuid.uuid4())
    models = models or [model]
    ids = [assistant_id or str(uuid.uuid4())] + [str(uuid.uuid4()) for _ in models[1:]]
    body: dict[str, Any] = {
        "stream": True,
        "model": models[0],
        "params": {},
        "tool_ids": [],
        "features": {"web_search": False},
        "variables": {},
        "session_id": session_id,
        "id": ids[0],
        "message_ids": [
            {"model_id": m, "message_id": mid, "modelIdx": i}
            for i, (m, mid) in enumerate(zip(models, ids, strict=True))
        ],
        "parent_id": parent_id,
        "user_message": {
            "id": user_id,
            "parentId": parent_id,
            "childrenIds": [],
            "role": "user",
            "content": content,
            "timestamp": int(time.time()),
            "models": models,
        },
        # The web app asks for a generated title, tags and follow-ups here; those
        # are tested on their own (test_background_tasks.py), so the turns of
        # other tests ask for none and get the question's first words as title.
        "background_tasks": {},
    }
    if chat_id is not None:
        body["chat_id"] = chat_id
    return body


async def post_json(
    url: str, token: str | None, body: Any, expect: int = 200, method: str = "POST"
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, json=body, headers=headers) as resp:
            text = await resp.text()
            data = json.loads(text) if text else None
            assert resp.status == expect, (url, resp.status, data)
            return data


async def get_json(url: str, token: str | None, expect: int = 200) -> Any:
    return await post_json(url, token, None, expect, method="GET")


async def metric_total(base_url: str, name: str) -> float:
    """The sum of a metric's samples over every label, from `GET /metrics`."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))
