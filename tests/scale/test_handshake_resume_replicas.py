"""A Socket.IO handshake that names a running reply to resume (`auth.resume`) gets
each of its events once, also with the replicas on Redis.

Subscribing a socket to its user's room takes a round trip to Redis (`watching`),
and the reply's live copies that arrived meanwhile went straight to the socket:
its follower, set up after, sent them again ("c73 c73": found by the scale-out
probe of 2026-12-07, a tab that came back after a rolling restart).  The named
replies' copies are now held back from the subscription on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.api.test_resume_transports import (
    SLOW_TEXT,
    account,
    of,
    rebuilt,
    webapp_turn,
)
from tests.clients import PySocket
from tests.gatewayproc import GatewayProcess


async def test_a_handshake_resume_mid_reply_sends_each_event_once(
    cluster: Callable[..., GatewayProcess],
) -> None:
    one = cluster("one")
    user = account()
    first = await PySocket().connect(one.url, user.token, auth={"seq": True})
    try:
        _, message_id = await webapp_turn(one, user, first)

        async def comes_back(delay_s: float) -> None:
            # A tab that had the reply up to the seq the first socket has now.
            await asyncio.sleep(delay_s)
            mine = of(first.events, message_id)
            last, text = mine[-1]["seq"], rebuilt(mine)
            back = await PySocket().connect(
                one.url, user.token, auth={"seq": True, "resume": {message_id: last}}
            )
            try:
                await back.wait_ended()
            finally:
                await back.close()
            got = of(back.events, message_id)
            # (the several envelopes of an end share its seq)
            sent = [(e["seq"], e["type"]) for e in got]
            assert len(sent) == len(set(sent)), f"an event came twice after {last}: {sent}"
            assert rebuilt(got, text) == SLOW_TEXT, last

        await first.wait_until(lambda evs: len(of(evs, message_id)) >= 3)
        # Fourteen tabs, 60 ms apart, over the reply's 1.3 s: resumed in every phase of
        # a delta's way to the sockets.
        await asyncio.gather(*(comes_back(i * 0.06) for i in range(14)))
    finally:
        await first.close()
