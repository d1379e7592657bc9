"""The SSE mirror `GET /api/v1/events` (one replica): every Open WebUI `events`
envelope a Socket.IO socket of the user gets, as Server-Sent Events, in the same
order; resumable from the cursor in `id:` (the running reply continues exactly,
a reply that began and ended unseen comes whole, one seen whole does not come
again); a fresh stream opened mid-reply gets the text so far, exact, then the
deltas; only the user's own events; a bound on streams per user; SSE headers and
keepalive comments."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.clients import PySocket, completion_of, ended, post_json, text_of, turn_body
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token

SLOW_TEXT = "".join(f"w{i} " for i in range(64))  # fake-slow, as the deltas carry it
Events = list[dict[str, Any]]


def user() -> tuple[str, str]:
    user_id = f"mirror-{uuid.uuid4().hex[:10]}"
    return user_id, make_token(user_id, name=user_id.upper())


class Mirror:
    """One `GET /api/v1/events`, read as an EventSource reads it: events are
    dispatched at the blank line; the last `id:` seen is the `Last-Event-ID`."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        last_event_id: str | None = None,
        token_in_query: bool = False,
        cursor_in_query: bool = False,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.resume_from = last_event_id
        self.token_in_query = token_in_query
        self.cursor_in_query = cursor_in_query
        self.http = aiohttp.ClientSession()
        self.resp: aiohttp.ClientResponse | None = None
        self.status = 0
        # Like PySocket's records (no "t"), with the SSE id the event came with.
        self.events: Events = []
        self.comments: list[str] = []
        self.last_id = last_event_id
        self.eof = False
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def open(self) -> Mirror:
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        if self.token is not None:
            if self.token_in_query:
                params["token"] = self.token
            else:
                headers["Authorization"] = f"Bearer {self.token}"
        if self.resume_from is not None:
            if self.cursor_in_query:
                params["last_event_id"] = self.resume_from
            else:
                headers["Last-Event-ID"] = self.resume_from
        try:
            self.resp = await self.http.get(
                f"{self.base_url}/api/v1/events", params=params, headers=headers
            )
        except BaseException:
            await self.http.close()
            raise
        self.status = self.resp.status
        if self.status == 200:
            self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.resp is not None
        data: list[str] = []
        event_id: str | None = None
        try:
            async for raw in self.resp.content:
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if data:
                        envelope = json.loads("\n".join(data))
                        if event_id is not None:
                            self.last_id = event_id
                        self.events.append(
                            {
                                "chat_id": envelope["chat_id"],
                                "message_id": envelope["message_id"],
                                "type": envelope["data"]["type"],
                                "data": envelope["data"]["data"],
                                "id": event_id,
                            }
                        )
                        self._changed.set()
                    data, event_id = [], None
                elif line.startswith(":"):
                    self.comments.append(line)
                    self._changed.set()
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.eof = True
            self._changed.set()

    async def wait_until(self, done: Callable[[Mirror], bool], timeout_s: float = 20) -> Mirror:
        deadline = time.monotonic() + timeout_s
        while not done(self):
            assert not self.eof, f"the stream ended early: {[e['type'] for e in self.events]}"
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                seen = [(e["type"], e["message_id"][:8]) for e in self.events]
                raise AssertionError(f"timed out; the stream had {seen}") from None
        return self

    async def wait_ended(self, count: int = 1, timeout_s: float = 20) -> Events:
        await self.wait_until(lambda m: sum(map(ended, m.events)) >= count, timeout_s)
        return self.events

    async def close(self) -> None:
        """The client leaves: the HTTP response is closed mid-stream."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.resp is not None:
            self.resp.close()
        await self.http.close()


def stripped(events: Events) -> Events:
    """What both transports carry: type, chat id, message id, data."""
    keys = ("type", "chat_id", "message_id", "data")
    return [{k: e[k] for k in keys} for e in events]


def of(events: Events, message_id: str) -> Events:
    return [e for e in events if e["message_id"] == message_id]


def deltas(events: Events, message_id: str) -> int:
    return sum(e["type"] == "chat:message:delta" for e in of(events, message_id))


async def turn(gateway: GatewayProcess, token: str, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = await post_json(f"{gateway.url}/api/chat/completions", token, body)
    return answer


# -- 1. the same events as a Socket.IO client, in the same order ---------------------
async def test_the_mirror_gets_what_a_socket_gets_in_the_same_order(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    mirror = await Mirror(gateway.url, token).open()
    try:
        assert mirror.status == 200
        # Chat A: a whole reply.
        a1 = turn_body(sock.sid, "first chat question")
        chat_a = (await turn(gateway, token, a1))["chat_id"]
        await sock.wait_ended(1)
        # Chat B: a slow reply; while it runs, chat A's question is answered again
        # (a regenerate: the same user message, a new reply id), interleaved.
        b1 = turn_body(sock.sid, "second chat question", "fake-slow")
        chat_b = (await turn(gateway, token, b1))["chat_id"]
        await sock.wait_until(lambda evs: deltas(evs, b1["id"]) >= 5)
        regen = turn_body(
            sock.sid,
            "first chat question",
            chat_id=chat_a,
            user_message_id=a1["user_message"]["id"],
        )
        await turn(gateway, token, regen)
        await sock.wait_ended(3)
        # A follow-up in chat B, stopped while it runs.
        b2 = turn_body(sock.sid, "crawl on", "fake-crawl", chat_id=chat_b, parent_id=b1["id"])
        (task_id,) = (await turn(gateway, token, b2))["task_ids"]
        await sock.wait_until(lambda evs: deltas(evs, b2["id"]) >= 5)
        stopped = await post_json(f"{gateway.url}/api/tasks/stop/{task_id}", token, None)
        assert stopped["status"] is True
        await sock.wait_ended(4)
        await mirror.wait_ended(4)
        # Anything that follows the last end has time to arrive on both.
        await asyncio.sleep(0.3)
    finally:
        await sock.close()
        await mirror.close()

    seen = stripped(sock.events)
    assert stripped(mirror.events) == seen
    # The session was what it says: two chats, a regenerate, an interleaving, a stop.
    assert {e["chat_id"] for e in seen} == {chat_a, chat_b}
    replies = [a1["id"], regen["id"], b1["id"], b2["id"]]
    assert [e["message_id"] for e in seen if ended(e)] == replies
    assert text_of(seen, a1["id"]) == text_of(seen, regen["id"])
    assert text_of(seen, a1["id"]) == reply_text(
        "fake-model", [{"role": "user", "content": "first chat question"}]
    )
    assert text_of(seen, b1["id"]) == SLOW_TEXT
    order = [e["message_id"] for e in seen]
    first_regen, last_b1 = order.index(regen["id"]), len(order) - order[::-1].index(b1["id"])
    assert first_regen < last_b1, "the regenerate ran while chat B's reply ran"
    stop = completion_of(seen, b2["id"])
    assert stop["cancelled"] is True and stop["content"] == text_of(seen, b2["id"])
    assert 0 < len(stop["content"]) < len("".join(f"c{i} " for i in range(300)))
    assert "chat:tasks:cancel" in [e["type"] for e in of(seen, b2["id"])]
    # Every event's last frame carries the cursor; a reply's end is one event of
    # several frames, the id on its last (chat:active false) only.
    for e in mirror.events:
        if e["type"] in ("chat:completion", "chat:title", "chat:tasks:cancel"):
            assert e["id"] is None, e
        else:
            assert e["id"], e


# -- 2. resuming from the cursor --------------------------------------------------------
async def test_resuming_from_the_cursor_sends_what_was_missed_once(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    witness = await PySocket().connect(gateway.url, token)  # connected all along
    first = await Mirror(gateway.url, token).open()
    second: Mirror | None = None
    third: Mirror | None = None
    try:
        # Seen whole before the cut.
        r0 = turn_body(witness.sid, "seen whole")
        await turn(gateway, token, r0)
        await first.wait_ended(1)
        # Running at the cut.
        r1 = turn_body(witness.sid, "cut me", "fake-slow")
        await turn(gateway, token, r1)
        await first.wait_until(lambda m: deltas(m.events, r1["id"]) >= 10)
        await first.close()
        cursor1 = first.last_id
        assert cursor1 is not None
        # Begun and finished while nobody listened on the mirror.
        r2 = turn_body(witness.sid, "unseen whole")
        await turn(gateway, token, r2)
        await witness.wait_ended(2)
        assert deltas(witness.events, r1["id"]) > deltas(first.events, r1["id"])

        second = await Mirror(gateway.url, token, last_event_id=cursor1).open()
        assert second.status == 200
        await second.wait_until(lambda m: any(ended(e) for e in of(m.events, r2["id"])))
        await second.wait_until(lambda m: deltas(m.events, r1["id"]) >= 10)
        await second.close()
        cursor2 = second.last_id
        assert cursor2 is not None and cursor2 != cursor1
        # Some of r1 passes unseen again (unless it has ended).
        had = deltas(first.events, r1["id"]) + deltas(second.events, r1["id"])
        await witness.wait_until(
            lambda evs: deltas(evs, r1["id"]) >= min(64, had + 15) or sum(map(ended, evs)) >= 3
        )
        # This time the cursor in the query, as an EventSource polyfill may send it.
        third = await Mirror(gateway.url, token, last_event_id=cursor2, cursor_in_query=True).open()
        assert third.status == 200
        if not any(ended(e) for e in of(second.events, r1["id"])):
            await third.wait_until(lambda m: any(ended(e) for e in of(m.events, r1["id"])))
        await witness.wait_ended(3)
    finally:
        await witness.close()
        for mirror in (first, second, third):
            if mirror is not None:
                await mirror.close()
    assert second is not None and third is not None

    # The running reply, rebuilt from before and after each cut: exact, ended once.
    rebuilt = "".join(text_of(m.events, r1["id"]) for m in (first, second, third))
    assert rebuilt == SLOW_TEXT
    for resumed in (second, third):
        kinds = [e["type"] for e in of(resumed.events, r1["id"])]
        assert not kinds or kinds[0] == "chat:message:delta", kinds  # no snapshot, no restart
    after_cuts = of(second.events + third.events, r1["id"])
    assert completion_of(after_cuts, r1["id"])["content"] == SLOW_TEXT.strip()
    assert stripped(after_cuts)[-1] == stripped(of(witness.events, r1["id"]))[-1]
    assert deltas(third.events, r1["id"]) > 0 or ended(after_cuts[-1])
    # The reply that began and ended while disconnected: whole, once, on the first resume.
    assert stripped(of(second.events, r2["id"])) == stripped(of(witness.events, r2["id"]))
    assert of(third.events, r2["id"]) == []
    # The reply seen whole before the cut is not sent again.
    assert of(second.events, r0["id"]) == [] and of(third.events, r0["id"]) == []
    assert stripped(of(first.events, r0["id"])) == stripped(of(witness.events, r0["id"]))


def few_events_or_the_end(running: set[str]) -> Callable[[Mirror], bool]:
    """Where a flaky network cuts: after 4 events, or once the replies have ended."""

    def done(mirror: Mirror) -> bool:
        return len(mirror.events) >= 4 or running <= {
            e["message_id"] for e in mirror.events if ended(e)
        }

    return done


async def test_a_stream_cut_again_and_again_continues_every_reply_exactly(
    gateway: GatewayProcess,
) -> None:
    """A flaky network: the stream is cut every 4 events while four replies run and
    resumed from its last id, each time by the tab that lost it and by three more
    tabs at once; every resumed stream continues each reply exactly where the
    cursor stood (no delta twice, none lost, none out of order)."""
    _, token = user()
    witness = await PySocket().connect(gateway.url, token)
    stream = await Mirror(gateway.url, token).open()
    bodies = [turn_body(witness.sid, f"flaky {i}", "fake-slow") for i in range(4)]
    ids = [body["id"] for body in bodies]
    chain = ""  # the cursor streams resume from: the last id the chain got
    known = dict.fromkeys(ids, "")  # each reply's text as the chain has it
    finished: set[str] = set()
    cuts = 0
    tabs: list[Mirror] = []
    try:
        for body in bodies:
            await turn(gateway, token, body)
        while True:
            await stream.wait_until(few_events_or_the_end(set(ids) - finished))
            for tab in (stream, *tabs):
                await tab.close()
            # The other tabs got, from the same cursor, what follows it.
            for tab in tabs:
                assert tab.status == 200
                for mid in ids:
                    assert SLOW_TEXT.startswith(known[mid] + text_of(tab.events, mid)), (
                        f"cut {cuts}: a tab resumed from {chain!r} got "
                        f"{text_of(tab.events, mid)!r} after {known[mid][-12:]!r}"
                    )
            for mid in ids:
                got = text_of(stream.events, mid)
                assert SLOW_TEXT.startswith(known[mid] + got), (
                    f"cut {cuts}: the stream resumed from {chain!r} got {got!r} "
                    f"after {known[mid][-12:]!r}"
                )
                known[mid] += got
            finished |= {e["message_id"] for e in stream.events if ended(e)}
            assert stream.last_id is not None
            chain = stream.last_id
            if finished >= set(ids):
                break
            cuts += 1
            stream, *tabs = await asyncio.gather(
                *(Mirror(gateway.url, token, last_event_id=chain).open() for _ in range(4))
            )
            assert stream.status == 200
        await witness.wait_ended(len(ids))
    finally:
        await witness.close()
        for tab in (stream, *tabs):
            await tab.close()
    assert cuts >= 10, "the replies ran while the stream was cut again and again"
    for mid in ids:
        assert known[mid] == SLOW_TEXT, f"rebuilt {known[mid]!r}"
        assert text_of(witness.events, mid) == SLOW_TEXT


# -- 3. a fresh stream mid-reply -------------------------------------------------------
async def test_a_fresh_stream_mid_reply_gets_the_text_so_far_then_the_deltas(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    sock = await PySocket().connect(gateway.url, token)
    mirror: Mirror | None = None
    try:
        done = turn_body(sock.sid, "over before")
        await turn(gateway, token, done)
        await sock.wait_ended(1)
        body = turn_body(sock.sid, "join me midway", "fake-slow")
        await turn(gateway, token, body)
        await sock.wait_until(lambda evs: deltas(evs, body["id"]) >= 10)
        so_far = text_of(sock.events, body["id"])
        mirror = await Mirror(gateway.url, token).open()
        assert mirror.status == 200
        await mirror.wait_ended(1)
        await sock.wait_ended(2)
    finally:
        await sock.close()
        if mirror is not None:
            await mirror.close()
    first = mirror.events[0]
    assert first["type"] == "chat:message" and first["message_id"] == body["id"]
    assert first["data"]["snapshot"] == "exact"
    snapshot = first["data"]["content"]
    assert snapshot.startswith(so_far) and SLOW_TEXT.startswith(snapshot)
    assert snapshot + text_of(mirror.events, body["id"]) == SLOW_TEXT
    assert completion_of(mirror.events, body["id"])["content"] == SLOW_TEXT.strip()
    assert [e["message_id"] for e in mirror.events] == [body["id"]] * len(mirror.events)
    assert "chat:active" not in [e["type"] for e in mirror.events[:-1]]


# -- 4. who gets a stream, and how many ----------------------------------------------
async def test_a_stream_needs_a_token_and_carries_only_the_users_own_events(
    gateway: GatewayProcess,
) -> None:
    none = await Mirror(gateway.url, None).open()
    await none.close()
    assert none.status == 401
    forged = await Mirror(
        gateway.url, make_token("x", secret="not-the-gateways-secret-but-32-bytes-long")
    ).open()
    await forged.close()
    assert forged.status == 401

    _, alice = user()
    _, bob = user()
    alice_sock = await PySocket().connect(gateway.url, alice)
    bob_sock = await PySocket().connect(gateway.url, bob)
    alice_mirror = await Mirror(gateway.url, alice, token_in_query=True).open()
    bob_mirror: Mirror | None = None
    try:
        assert alice_mirror.status == 200
        # Bob's reply runs while Alice's stream is open; then one of Alice's.
        bobs = turn_body(bob_sock.sid, "bob's own", "fake-slow")
        await turn(gateway, bob, bobs)
        await bob_sock.wait_until(lambda evs: deltas(evs, bobs["id"]) >= 5)
        # Bob's stream resumed from a cursor naming Alice's reply: still only Bob's.
        alices = turn_body(alice_sock.sid, "alice's own", "fake-slow")
        await turn(gateway, alice, alices)
        await alice_mirror.wait_until(lambda m: deltas(m.events, alices["id"]) >= 3)
        assert alice_mirror.last_id is not None and alices["id"] in alice_mirror.last_id
        bob_mirror = await Mirror(gateway.url, bob, last_event_id=alice_mirror.last_id).open()
        assert bob_mirror.status == 200
        await bob_sock.wait_ended(1)
        await alice_sock.wait_ended(1)
        await alice_mirror.wait_ended(1)
        last = turn_body(bob_sock.sid, "bob again")
        await turn(gateway, bob, last)
        await bob_mirror.wait_until(lambda m: any(ended(e) for e in of(m.events, last["id"])))
        await bob_sock.wait_ended(2)
    finally:
        for sock in (alice_sock, bob_sock):
            await sock.close()
        for mirror in (alice_mirror, bob_mirror):
            if mirror is not None:
                await mirror.close()
    assert bob_mirror is not None
    assert {e["message_id"] for e in alice_mirror.events} == {alices["id"]}
    assert stripped(alice_mirror.events) == stripped(alice_sock.events)
    assert text_of(alice_mirror.events, alices["id"]) == SLOW_TEXT
    assert of(bob_mirror.events, alices["id"]) == []
    assert {e["message_id"] for e in bob_mirror.events} == {bobs["id"], last["id"]}
    # Bob's running reply was not in the (Alice's) cursor: it came whole.
    assert text_of(bob_mirror.events, bobs["id"]) == SLOW_TEXT
    assert stripped(of(bob_mirror.events, last["id"])) == stripped(of(bob_sock.events, last["id"]))


async def test_streams_per_user_are_bounded_and_a_closed_one_frees_its_slot(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_MAX_FOLLOWERS_PER_USER": "2"}
    )
    _, token = user()
    _, other = user()
    opened = [await Mirror(gw.url, token).open() for _ in range(2)]
    extra: list[Mirror] = []
    try:
        assert [m.status for m in opened] == [200, 200]
        third = await Mirror(gw.url, token).open()
        extra.append(third)
        assert third.status == 429
        # The bound is per user: another user still gets one.
        theirs = await Mirror(gw.url, other).open()
        extra.append(theirs)
        assert theirs.status == 200
        await opened.pop(0).close()
        # The server notices the closed stream; then the slot is free again.
        deadline = time.monotonic() + 5
        while True:
            again = await Mirror(gw.url, token).open()
            extra.append(again)
            if again.status == 200 or time.monotonic() > deadline:
                break
            await again.close()
            await asyncio.sleep(0.05)
        assert again.status == 200
        # And it is full again.
        full = await Mirror(gw.url, token).open()
        extra.append(full)
        assert full.status == 429
    finally:
        for mirror in opened + extra:
            await mirror.close()


# -- 5. headers and keepalive -------------------------------------------------------------
async def test_sse_headers_and_keepalive_comments(
    gateway: GatewayProcess, start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    _, token = user()
    mirror = await Mirror(gateway.url, token).open()
    try:
        assert mirror.status == 200 and mirror.resp is not None
        assert mirror.resp.headers["Content-Type"].startswith("text/event-stream")
        assert mirror.resp.headers["X-Accel-Buffering"] == "no"
        assert mirror.resp.headers["Cache-Control"] == "no-cache"
    finally:
        await mirror.close()

    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_SSE_KEEPALIVE_S": "0.2"}
    )
    idle = await Mirror(gw.url, token).open()
    try:
        assert idle.status == 200
        started = time.monotonic()
        await idle.wait_until(lambda m: len(m.comments) >= 3, timeout_s=5)
        elapsed = time.monotonic() - started
    finally:
        await idle.close()
    assert idle.comments[:3] == [": keepalive"] * 3
    assert idle.events == []
    assert elapsed >= 0.35, "one comment per 0.2 s of silence, not a flood"
