"""A sign-in flood as an attacker runs it, in a process of its own so that the test's
own client, which measures the gateway's latency meanwhile, is not slowed by it.

    python -m tests.security.flood URL SECONDS CLIENTS MODE EMAIL...

Wrong passwords for the given e-mails (known or not), in turn. MODE
`one-address`: every request from this machine. MODE `many-addresses`: each
request claims a different client address (`X-Forwarded-For`, believed from
loopback), as a botnet's would. Prints `started` once the first answer
is in, then one JSON line: the statuses counted, the 429/503 answers without a
`Retry-After`, the Retry-After values seen and one 429 body.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from typing import Any

import aiohttp


async def flood(url: str, seconds: float, clients: int, mode: str, emails: list[str]) -> None:
    statuses: dict[int, int] = {}
    retry_after: list[int] = []
    missing_retry_after = 0
    sample: dict[str, Any] = {}
    started = asyncio.Event()
    serial = itertools.count()
    deadline = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession, number: int) -> None:
        nonlocal missing_retry_after
        while time.monotonic() < deadline:
            n = next(serial)
            headers = {}
            if mode == "many-addresses":
                headers["X-Forwarded-For"] = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            body = {"email": emails[n % len(emails)], "password": f"wrong-{n}"}
            async with http.post(f"{url}/api/v1/auths/signin", json=body, headers=headers) as resp:
                payload = await resp.json(content_type=None)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status in (429, 503):
                    if "Retry-After" in resp.headers:
                        retry_after.append(int(resp.headers["Retry-After"]))
                    else:
                        missing_retry_after += 1
                    sample.setdefault(str(resp.status), payload)
            if not started.is_set():
                started.set()
                print("started", flush=True)

    # One connection per client, as 30 attackers' connections would be.
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(http, i) for i in range(clients)))
    print(
        json.dumps(
            {
                "statuses": statuses,
                "missing_retry_after": missing_retry_after,
                "retry_after": [min(retry_after), max(retry_after)] if retry_after else [],
                "sample": sample,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    url, seconds, clients, mode, *emails = sys.argv[1:]
    asyncio.run(flood(url, float(seconds), int(clients), mode, emails))
