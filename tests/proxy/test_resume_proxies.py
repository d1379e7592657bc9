"""Resumable replies through each shipped proxy config, with two replicas behind it.

A client attached to a running reply over SSE
(`GET …/api/v1/chats/{chat_id}/messages/{message_id}/stream`) or following every
event of its user (`GET …/api/v1/events`) is cut again and again after a random
number of events; each time it comes back with `Last-Event-ID`, through the
proxy, landing on either replica.  The text it rebuilds equals the upstream's
exactly (the event ids it was given run without a gap or a repeat), and the
proxy hands the stream on as it comes (no buffering, no compression).

Where each request went: nginx's access log names the replica; Caddy's affinity
cookie (`lb_policy cookie`: HMAC-SHA256 of the replica's address, empty secret)
names the one it picked for a request without the cookie, and sending it pins
the next request to the replica it names, so the reconnects alternate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aiohttp
import websockets

from tests.fakes.upstream import FakeUpstream, deltas_of
from tests.gatewayproc import GatewayProcess, make_token
from tests.proxy.runners import Proxy

SLOW_TEXT = "".join(deltas_of("fake-slow", ""))  # "w0 w1 … w63 ", 20 ms apart
RESUMERS = 3  # clients resuming one reply at once, each with its own cuts
MAX_CONNECTIONS = 40  # a client that needs more never gets to the end
# A stream that says nothing for this long has stalled (fake-slow: an event every 20 ms).
STALLED = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=5)


def user() -> str:
    return make_token(f"resume-px-{uuid.uuid4().hex[:10]}")


# -- the reply ------------------------------------------------------------------------------
@dataclass
class Reply:
    """A fake-slow reply asked over Nadoo's WebSocket through the proxy; the socket
    stays open and reads the reply to its end (when that came: `ended_at`)."""

    question: str
    session: str
    chat_id: str
    message_id: str
    started_at: float
    ws: Any
    reader: asyncio.Task[dict[str, Any]] | None = None
    ended_at: float = 0.0

    async def end(self) -> dict[str, Any]:
        assert self.reader is not None
        try:
            return await asyncio.wait_for(self.reader, 20)
        finally:
            await self.ws.close()

    @property
    def duration(self) -> float:
        return self.ended_at - self.started_at


async def ask(proxy: Proxy, token: str) -> Reply:
    question = f"resume through {proxy.name} {uuid.uuid4().hex[:8]}"
    session = f"rs-{uuid.uuid4().hex[:8]}"
    url = f"{proxy.ws_base}/ws/chat/{session}?token={token}"
    ws = await websockets.connect(url)
    try:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connected"
        chat = {"type": "chat", "content": question, "application_id": "fake-slow"}
        await ws.send(json.dumps(chat))
        while (start := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != (
            "response_start"
        ):
            assert start["type"] not in ("error", "response_end"), start
    except BaseException:
        await ws.close()
        raise
    ids = start["chat_id"], start["message_id"]
    reply = Reply(question, session, *ids, time.monotonic(), ws)

    async def read_to_the_end() -> dict[str, Any]:
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            assert frame["type"] != "error", frame
            if frame["type"] == "response_end":
                reply.ended_at = time.monotonic()
                return frame

    reply.reader = asyncio.create_task(read_to_the_end())
    return reply


def check_upstream(fake_upstream: FakeUpstream, reply: Reply, end: dict[str, Any]) -> None:
    """The upstream streamed the whole reply to the gateway (none of the cuts reached it)."""
    asked = fake_upstream.requests_for(reply.question)
    assert len(asked) == 1 and asked[0].finished and not asked[0].disconnected, asked
    assert asked[0].chunks_sent == len(deltas_of("fake-slow", "")) + 2  # role, deltas, stop
    assert end["message_id"] == reply.message_id
    assert end["full_response"] == SLOW_TEXT.strip()


# -- Server-Sent Events ---------------------------------------------------------------------
@dataclass
class Frame:
    id: str | None
    envelope: dict[str, Any]
    t: float

    @property
    def type(self) -> str:
        return str(self.envelope["data"]["type"])

    @property
    def data(self) -> Any:
        return self.envelope["data"]["data"]


async def frames_of(resp: aiohttp.ClientResponse) -> AsyncIterator[Frame]:
    """Complete SSE events as a browser's EventSource takes them (comments skipped); the
    bytes of an event still incomplete when the client cuts are lost, as in a browser."""
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n\n")) >= 0:
            raw, buffer = buffer[:end], buffer[end + 2 :]
            fields: dict[str, str] = {}
            for line in raw.decode().split("\n"):
                if not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
            if "data" in fields:
                yield Frame(fields.get("id"), json.loads(fields["data"]), time.monotonic())


def check_stream_headers(resp: aiohttp.ClientResponse) -> None:
    """What the gateway says of the stream reaches the client, and nothing that would hold
    it back is added (nginx acts on X-Accel-Buffering itself and does not pass it on)."""
    assert resp.status == 200, resp.status
    assert resp.headers["Content-Type"].startswith("text/event-stream"), resp.headers
    assert resp.headers["Cache-Control"] == "no-cache", resp.headers
    assert resp.headers.get("X-Accel-Buffering", "no") == "no", resp.headers
    assert "Content-Encoding" not in resp.headers and "Content-Length" not in resp.headers


# -- which replica served a request ---------------------------------------------------------
def caddy_cookie(port: int) -> str:
    """Caddy's `lb_policy cookie` value for a replica (no secret in the shipped config)."""
    return hmac.new(b"", f"127.0.0.1:{port}".encode(), hashlib.sha256).hexdigest()


class Landings:
    """Where one client's requests went.  Caddy: the first request goes without the
    affinity cookie (Caddy picks a replica and says which in the cookie it sets), each
    later one is pinned to the other replica than the one before.  nginx (least_conn,
    nothing to pin with): read from its access log once the requests are over."""

    def __init__(self, proxy: Proxy, replicas: list[GatewayProcess]) -> None:
        self.proxy = proxy
        self.ports = [replica.port for replica in replicas]
        self.caddy = proxy.name.startswith("caddy")
        self.requests = 0
        self.seen: list[int] = []  # Caddy: each request's replica

    def headers(self) -> dict[str, str]:
        self.requests += 1
        if not self.caddy or not self.seen:
            return {}
        other = next(port for port in self.ports if port != self.seen[-1])
        self.seen.append(other)
        return {"Cookie": f"gw_affinity={caddy_cookie(other)}"}

    def landed(self, resp: aiohttp.ClientResponse) -> None:
        if not self.caddy:
            return
        set_cookies = [
            value for value in resp.headers.getall("Set-Cookie", []) if "gw_affinity=" in value
        ]
        if len(self.seen) == self.requests:  # pinned: Caddy found the replica, set nothing
            assert set_cookies == [], (self.seen, set_cookies)
            return
        assert len(set_cookies) == 1, resp.headers
        value = set_cookies[0].split(";")[0].removeprefix("gw_affinity=")
        picked = [port for port in self.ports if caddy_cookie(port) == value]
        assert len(picked) == 1, (value, self.ports)
        self.seen.append(picked[0])


async def replicas_served(clients: list[Landings], marker: str) -> set[int]:
    """The replicas that served these clients' requests (`marker`: in each request's
    path or query, in no other client's)."""
    proxy, ports = clients[0].proxy, set(clients[0].ports)
    if clients[0].caddy:
        assert all(len(client.seen) == client.requests for client in clients)
        return {port for client in clients for port in client.seen}
    requests = sum(client.requests for client in clients)
    served: list[str] = []
    for _ in range(100):  # nginx logs a request when it is over
        served = [addr for request, addr in proxy.upstreams() if marker in request]
        if len(served) >= requests:
            break
        await asyncio.sleep(0.05)
    assert len(served) == requests, (marker, served, requests)
    used = {int(addr.rpartition(":")[2]) for addr in served}
    assert used <= ports, served
    return used


async def running_replica(proxy: Proxy, replicas: list[GatewayProcess], reply: Reply) -> int:
    """The replica that runs the reply: the one its WebSocket reached (once it is closed)."""
    if proxy.name.startswith("caddy"):
        ports = [replica.port for replica in replicas]
        cookies = [
            value.split(";")[0].removeprefix("gw_affinity=")
            for value in reply.ws.response.headers.get_all("Set-Cookie")
            if value.startswith("gw_affinity=")
        ]
        picked = [port for port in ports if [caddy_cookie(port)] == cookies]
        assert len(picked) == 1, (cookies, ports)
        return picked[0]
    client = Landings(proxy, replicas)
    client.requests = 1
    (port,) = await replicas_served([client], f"/ws/chat/{reply.session}?")
    return port


# -- one reply over SSE, cut and resumed ----------------------------------------------------
@dataclass
class Attached:
    """What one client rebuilt of the reply over the attach route, as the web app
    does: a `chat:message` replaces the text, a delta adds to it."""

    text: str = ""
    ids: list[int] = field(default_factory=list)
    completion: dict[str, Any] | None = None
    first_delta_at: float = 0.0
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    # Per connection: the Last-Event-ID sent, then the ids (or types) received.
    story: list[str] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len(self.story)


async def read_body(resp: aiohttp.ClientResponse) -> str:
    """What a response says within a second (for a failure's message)."""
    body = b""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(1):
            async for chunk in resp.content.iter_any():
                body += chunk
    return body.decode(errors="replace")


async def attach_with_cuts(
    proxy: Proxy, token: str, reply: Reply, landings: Landings, rng: random.Random
) -> Attached:
    url = f"{proxy.base}/api/v1/chats/{reply.chat_id}/messages/{reply.message_id}/stream"
    got = Attached()
    last: str | None = None
    ended = False
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=STALLED) as http:
        while not ended:
            assert got.connections < MAX_CONNECTIONS, got.story
            headers = {"Authorization": f"Bearer {token}", **landings.headers()}
            if last is not None:
                headers["Last-Event-ID"] = last
            got.story.append(f"after {last}:")
            cut = rng.randint(1, 24)
            async with http.get(url, headers=headers) as resp:
                landings.landed(resp)
                check_stream_headers(resp)
                taken = 0
                try:
                    async for frame in frames_of(resp):
                        assert frame.envelope["chat_id"] == reply.chat_id, frame
                        assert frame.envelope["message_id"] == reply.message_id, frame
                        got.story[-1] += f" {frame.id or frame.type}"
                        if frame.type == "chat:message:delta":
                            got.text += frame.data["content"]
                            got.first_delta_at = got.first_delta_at or frame.t
                        elif frame.type == "chat:message":
                            got.snapshots.append(frame.data)
                            got.text = frame.data["content"]
                        elif frame.type == "chat:completion":
                            got.completion = frame.data
                        if frame.id is not None:
                            got.ids.append(int(frame.id))
                            last = frame.id
                        if frame.type == "chat:active" and frame.data == {"active": False}:
                            ended = True
                            break
                        taken += 1
                        if taken == cut:
                            break
                except aiohttp.SocketTimeoutError:
                    raise AssertionError(f"the stream stalled: {got.story}") from None
                resp.close()  # the cut: the connection goes, whatever was on its way
            if not ended:
                await asyncio.sleep(rng.uniform(0, 0.15))  # the reply goes on meanwhile
        # The end seen: nothing more to send, through the proxy too.
        headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(last)}
        async with http.get(url, headers={**headers, **landings.headers()}) as resp:
            landings.landed(resp)
            assert resp.status == 204, (resp.status, await read_body(resp), got.story)
    return got


async def test_an_attached_reply_resumes_exactly_after_cuts_on_any_replica(
    proxy: Proxy, replicas: list[GatewayProcess], fake_upstream: FakeUpstream
) -> None:
    token = user()
    reply = await ask(proxy, token)
    landings = [Landings(proxy, replicas) for _ in range(RESUMERS)]
    seed = random.randrange(2**32)
    try:
        # Each to its end (a stalled one gives up after STALLED), then the first failure.
        results = await asyncio.gather(
            *(
                attach_with_cuts(proxy, token, reply, landings[n], random.Random(seed + n))
                for n in range(RESUMERS)
            ),
            return_exceptions=True,
        )
    finally:
        end = await reply.end()
    got = [result for result in results if isinstance(result, Attached)]
    failed = [result for result in results if not isinstance(result, Attached)]
    if failed:
        raise failed[0]
    check_upstream(fake_upstream, reply, end)
    for n, attached in enumerate(got):
        where = (proxy.name, f"seed {seed + n}", attached.story)
        assert attached.text == SLOW_TEXT, where
        # Every event once, in order: ReplyStarted (0), each delta, ReplyFinished.
        assert attached.ids == list(range(len(attached.ids))), (where, attached.ids)
        # Everything was still in the replay buffer: no snapshot in place of events.
        assert attached.ids[-1] >= 2 and attached.snapshots == [], (where, attached.snapshots)
        assert attached.completion is not None and attached.completion["done"] is True
        assert attached.completion["content"].strip() == SLOW_TEXT.strip(), where
        assert attached.connections >= 3, where  # cut at least twice before the end
        # Not held back by the proxy: the first delta came at once, long before the end.
        assert attached.first_delta_at - reply.started_at < 0.3 * reply.duration, (
            where,
            attached.first_delta_at - reply.started_at,
            reply.duration,
        )
    await check_replicas(
        proxy,
        replicas,
        reply,
        await replicas_served(landings, f"/messages/{reply.message_id}/stream"),
    )


async def check_replicas(
    proxy: Proxy, replicas: list[GatewayProcess], reply: Reply, served: set[int]
) -> None:
    """Resumes reached a replica that does not run the reply (its events came from the
    shared buffer and bus); Caddy, where the test picks the replica, sent them to both."""
    running = await running_replica(proxy, replicas, reply)
    assert served - {running}, (proxy.name, "every stream on the running replica", served)
    if proxy.name.startswith("caddy"):
        assert served == {replica.port for replica in replicas}, (proxy.name, served)


# -- every event of the user (the SSE mirror), cut and resumed ------------------------------
def cursor_seq(event_id: str, message_id: str) -> int | None:
    """The reply's seq in a mirror cursor (`<ms>[.<seq>-<message id>]...`, base 36)."""
    for part in event_id.split(".")[1:]:
        seq, _, mid = part.partition("-")
        if unquote(mid) == message_id:
            return int(seq, 36)
    return None


@dataclass
class Mirrored:
    """What the client rebuilt of the reply from its user's event stream (as the web
    app does: a `chat:message` replaces the text, a delta adds to it)."""

    text: str = ""
    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    first_delta_at: float = 0.0
    story: list[str] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len(self.story)


def took(got: Mirrored, reply: Reply, frame: Frame) -> bool:
    """One envelope of the reply taken; True at its end."""
    assert frame.envelope["chat_id"] == reply.chat_id, frame
    got.types.append(frame.type)
    if frame.type == "chat:message:delta":
        got.text += frame.data["content"]
        got.first_delta_at = got.first_delta_at or frame.t
    elif frame.type == "chat:message":
        got.text = frame.data["content"]
    seq = None if frame.id is None else cursor_seq(frame.id, reply.message_id)
    got.story[-1] += f" {frame.type if seq is None else seq}"
    if seq is not None:  # one of the reply's events, while it runs
        got.seqs.append(seq)
    return frame.type == "chat:active" and frame.data == {"active": False}


async def test_the_events_mirror_resumes_after_cuts_on_any_replica(
    proxy: Proxy, replicas: list[GatewayProcess], fake_upstream: FakeUpstream
) -> None:
    """As a browser's EventSource uses it: the token in the query, `Last-Event-ID`
    on each reconnect.  The stream is open before the reply begins."""
    token = user()
    url = f"{proxy.base}/api/v1/events?token={token}"
    landings = Landings(proxy, replicas)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    got = Mirrored()
    reply: Reply | None = None
    last: str | None = None
    ended = False
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=STALLED) as http:
        try:
            while not ended:
                assert got.connections < MAX_CONNECTIONS, (seed, got.story)
                headers = landings.headers()
                if last is not None:
                    headers["Last-Event-ID"] = last
                got.story.append(f"after {last}:")
                cut = rng.randint(1, 24)
                async with http.get(url, headers=headers) as resp:
                    landings.landed(resp)
                    check_stream_headers(resp)
                    if reply is None:  # the stream is open: the reply begins
                        reply = await ask(proxy, token)
                    taken = 0
                    try:
                        async for frame in frames_of(resp):
                            taken += 1
                            if frame.id is not None:
                                last = frame.id  # whichever event carries it, as EventSource
                            if frame.envelope.get("message_id") == reply.message_id:
                                ended = took(got, reply, frame)
                            else:
                                got.story[-1] += f" ({frame.type})"
                            if ended or taken >= cut:
                                break
                    except aiohttp.SocketTimeoutError:
                        raise AssertionError(f"the stream stalled: {got.story}") from None
                    resp.close()  # the cut
                if not ended:
                    await asyncio.sleep(rng.uniform(0, 0.15))  # the reply goes on meanwhile
            # Resumed after the end: nothing of the reply again.
            assert reply is not None
            async with http.get(
                url, headers={"Last-Event-ID": str(last), **landings.headers()}
            ) as resp:
                landings.landed(resp)
                check_stream_headers(resp)
                again: list[Frame] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        async for frame in frames_of(resp):
                            again.append(frame)
                resp.close()
            repeated = [f.type for f in again if f.envelope.get("message_id") == reply.message_id]
            assert repeated == [], (repeated, got.story)
        finally:
            end = await reply.end() if reply is not None else None
    assert end is not None
    check_upstream(fake_upstream, reply, end)
    where = (proxy.name, f"seed {seed}", got.story)
    assert got.text == SLOW_TEXT, where
    assert "chat:message" not in got.types, where  # no snapshot: every delta, exactly
    assert got.types[0] == "chat:active" and got.types[-1] == "chat:active", where
    # The cursors named the reply's events 0, 1, 2, … with none missing or repeated.
    assert got.seqs == list(range(len(got.seqs))) and len(got.seqs) >= 2, where
    assert got.connections >= 3, where
    assert got.first_delta_at - reply.started_at < 0.3 * reply.duration, (
        where,
        got.first_delta_at - reply.started_at,
        reply.duration,
    )
    served = await replicas_served([landings], f"/api/v1/events?token={token}")
    await check_replicas(proxy, replicas, reply, served)
