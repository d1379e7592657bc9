"""A Socket.IO client that reads as fast as its network allows gets the whole reply,
however much faster than its network the model writes.

The fake model's flood writes 5,000,000 characters in about a quarter of a
second: five times what a connection may hold queued (GATEWAY_OUTBOX_MAX_CHARS,
1 Mi characters), so the socket falls behind within milliseconds.  The gateway
must then feed that reply from the replay buffer as the socket drains
(`Outbox.on_behind`, `Realtime.pace`), not drop the socket: before, the tab
was cut after a few hundred thousand characters with no `chat:completion`.

Whether a fast reader falls behind is a race between two processes, and a
busy machine has been seen to run the whole flood without it (CI, once, in
0.32 s).  So the python-socketio reader is made to fall behind for sure: its
event loop is busy for a second at the reply's first event (as a tab's is on
a long layout), and its outbox holds 64 Ki characters, far less than the
kernel's buffers and Engine.IO's queue leave of the 5 MB.  The npm client
reads with the defaults, as fast as it can.

Both clients the field uses: python-socketio's (its aiohttp websocket allowed
messages over 4 MB: the finished reply's `chat:completion` carries the whole
text) and the npm socket.io-client, over websocket and over long-polling.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import socketio

from tests.clients import JSSocket, ended, metric_total, post_json, text_of, turn_body
from tests.fakes.upstream import FakeUpstream, reply_text
from tests.gatewayproc import GatewayProcess, make_token

WHOLE = reply_text("fake-flood", [])
BUSY_S = 1.0


def check_whole_reply(events: list[dict[str, Any]], message_id: str) -> None:
    text = text_of(events, message_id)
    assert len(text) == len(WHOLE), f"{len(text):,} of {len(WHOLE):,} characters arrived"
    assert text == WHOLE
    completion = [
        e
        for e in events
        if e["type"] == "chat:completion"
        and e["message_id"] == message_id
        and e["data"].get("done")
    ]
    assert len(completion) == 1 and completion[0]["data"]["content"] == WHOLE
    assert sum(map(ended, events)) == 1


async def test_python_socketio_reader_gets_a_5_mb_reply_whole(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway(
        {"OPENAI_API_BASE_URL": fake_upstream.url, "GATEWAY_OUTBOX_MAX_CHARS": str(64 * 1024)}
    )
    token = make_token("u-fast-reader")
    events: list[dict[str, Any]] = []
    disconnects: list[str] = []
    busy: list[float] = []
    flood: set[str] = set()
    async with aiohttp.ClientSession() as http:
        client = socketio.AsyncClient(
            reconnection=False,
            http_session=http,
            websocket_extra_options={"max_msg_size": 0},
        )

        @client.on("events")
        async def on_event(data: dict[str, Any]) -> None:
            if not busy and data["message_id"] in flood:
                # The loop blocked: the socket takes nothing meanwhile, the model goes on.
                busy.append(BUSY_S)
                time.sleep(BUSY_S)  # noqa: ASYNC251 (blocking is the point)
            events.append(
                {
                    "message_id": data["message_id"],
                    "type": data["data"]["type"],
                    "data": data["data"]["data"],
                }
            )

        @client.on("disconnect")
        async def on_disconnect(*reason: Any) -> None:
            disconnects.append(repr(reason))

        await client.connect(
            gw.url,
            socketio_path="/ws/socket.io",
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=10,
        )
        try:
            sid = client.get_sid()
            assert sid is not None
            body = turn_body(sid, "flood", model="fake-flood")
            flood.add(body["id"])
            before = await metric_total(gw.url, "gateway_paced_replies_total")
            started = time.monotonic()
            await post_json(f"{gw.url}/api/chat/completions", token, body)
            deadline = started + 60
            while not any(map(ended, events)) and not disconnects:
                assert time.monotonic() < deadline, f"{len(events)} events in 60 s"
                await client.sleep(0.05)
            took = time.monotonic() - started
            assert not disconnects, f"dropped after {len(text_of(events, body['id'])):,} chars"
            check_whole_reply(events, body["id"])
            paced = await metric_total(gw.url, "gateway_paced_replies_total") - before
            print(
                f"\n5,000,000 characters over Socket.IO (python-socketio) in {took:.2f} s, "
                f"{len(events)} events; replies paced from the buffer: {paced:.0f}"
            )
            assert busy == [BUSY_S]
            assert paced >= 1, "the model was faster than the socket: the reply must be paced"
            # The socket is as good as before: a normal reply after it.
            after = turn_body(sid, "still there?")
            await post_json(f"{gw.url}/api/chat/completions", token, after)
            deadline = time.monotonic() + 20
            while sum(map(ended, events)) < 2:
                assert time.monotonic() < deadline
                await client.sleep(0.05)
            asked = [{"role": "user", "content": "still there?"}]
            assert text_of(events, after["id"]) == reply_text("fake-model", asked)
        finally:
            await client.disconnect()
    assert "slow socket dropped" not in gw.log()


async def test_npm_socketio_client_gets_a_5_mb_reply_whole_on_both_transports(
    start_gateway: Any, fake_upstream: FakeUpstream
) -> None:
    gw: GatewayProcess = start_gateway({"OPENAI_API_BASE_URL": fake_upstream.url})
    for transports in ("websocket", "polling"):
        token = make_token(f"u-fast-js-{transports}")
        sock = await JSSocket().start(gw.url, token, transports=transports, timeout_ms=60_000)
        try:
            body = turn_body(sock.sid, "flood", model="fake-flood")
            started = time.monotonic()
            await post_json(f"{gw.url}/api/chat/completions", token, body)
            await sock.wait_for("done", timeout_s=70)
            took = time.monotonic() - started
            # Its own close after "done" is the only disconnect.
            dropped = [
                line
                for line in sock.lines
                if line["kind"] == "disconnected" and line["reason"] != "io client disconnect"
            ]
            assert not dropped, dropped
            check_whole_reply(sock.events, body["id"])
            print(
                f"\n5,000,000 characters over Socket.IO ({transports}, npm socket.io-client) "
                f"in {took:.2f} s, {len(sock.events)} events"
            )
        finally:
            await sock.close()
    assert "slow socket dropped" not in gw.log()
