"""What the bus needs of Redis, tried: `gateway check-config --connect` (preflight.py).

Every kind of command the bus sends — the rooms' pub/sub, the replay journal's
streams, the registry's keys, hashes and sets, its close's transaction, the
claims' scripts, the edit locks, the sender's queue — tried on keys and a
channel of the check's own, `<prefix>check-config:<random>…`, so a user's ACL
must cover `<prefix>*` (what README's scale-out section asks for).  The bus's
scripts run as they are: Redis checks the ACL on the commands a script calls
too.

What is refused is told apart:

    a user's ACL         (NOPERM, a script's "can't run" / "ACL failure")  each kind named
    Redis's version      (XADD … MINID needs 6.2)                         said, the rest tried
    a read-only replica, Redis Cluster, anything else                     said once: the end

Nothing is written before an expiry is known to be allowed (`SET … EX`, then
`PEXPIRE`), each later key gets its expiry in the same round trip as its first
write, and the keys are deleted however the check ends (they expire within
`TTL_S` if even that fails).  The whole check is bounded by `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from gateway.bus import claims

TTL_S = 10
# The longest the keys' deletion is waited for, however the check ended.
CLEANUP_S = 2.0
# redis-py's preface to a pipelined command's error: the error is enough.
_PIPELINE = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ")
# How Redis before 6.2 refuses XADD's MINID (5.0 and 6.0 read it as an entry id).
_NO_MINID = ("syntax error", "invalid stream id")
_CLUSTER = (MovedError, AskError, ClusterDownError, ClusterCrossSlotError, TryAgainError)

Try = Callable[[], Awaitable[None]]


class _Stop(Exception):
    """A refusal that is not about one kind of command: nothing more is tried."""


class _TooOld(Exception):
    """Redis before 6.2: said, and the rest tried."""


def _acl(text: str) -> bool:
    return "NOPERM" in text or "no permissions" in text or "can't run this command" in text


def _why(exc: ResponseError) -> str:
    """Redis's answer as one line; raises `_Stop` for what ends the check."""
    text = _PIPELINE.sub("", " ".join(str(exc).split()))
    if isinstance(exc, NoPermissionError) or _acl(text):
        return text
    if isinstance(exc, ReadOnlyError):
        raise _Stop("REDIS_URL names a read-only replica; point it at the primary")
    if isinstance(exc, _CLUSTER) or "CROSSSLOT" in text:
        raise _Stop("this is a Redis Cluster, which the bus does not support; use one Redis")
    raise _Stop(f"Redis answered: {text}")


async def refused(client: Any, prefix: str, timeout_s: float) -> list[str]:
    """What this Redis refuses the bus, one line a kind ("XADD …: <Redis's answer>");
    [] when everything is allowed."""
    base = f"{prefix}check-config:{uuid.uuid4().hex[:12]}"
    keys = (base, f"{base}:h", f"{base}:s", f"{base}:x", f"{base}:l")
    try:
        async with asyncio.timeout(timeout_s):
            return await _tried(client, keys)
    except TimeoutError:
        return [f"Redis did not answer the check within {timeout_s:g} s"]
    except _Stop as stop:
        return [str(stop)]
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLEANUP_S):
                await client.delete(*keys)


async def _tried(client: Any, keys: tuple[str, str, str, str, str]) -> list[str]:
    string, fields, members, stream, locked = keys
    mine = "check-config "  # a replica id the claims' scripts hold fields for

    async def expiring() -> None:  # the registry's beat and its takeover
        await client.set(string, "1", ex=TTL_S, nx=True)
        await client.pexpire(string, TTL_S * 1000)

    async def strings() -> None:  # the registry's view of every replica's beat
        await client.mget([string])

    async def hashes() -> None:  # presence, tasks, the journal's index, the claims
        await (
            client.pipeline(transaction=False)
            .hset(fields, "f", "1")
            .pexpire(fields, TTL_S * 1000)
            .execute()
        )
        await client.hsetnx(fields, "g", "1")
        await client.hgetall(fields)
        await client.hkeys(fields)
        await client.hdel(fields, "g")

    async def scripts() -> None:  # the claims: as they are (Redis checks what they call)
        # SCRIPT LOAD itself, as redis-py sends it once Redis has forgotten the script
        # (a restart): EVALSHA alone would pass on a Redis that has it cached.
        sha = await client.script_load(claims.CLAIM)
        await client.evalsha(sha, 1, fields, mine, mine + "c", "m")
        await client.eval(claims.UNCLAIM, 1, fields, "m", mine + "c")
        await client.eval(claims.FORGET, 1, fields, mine)

    async def lock() -> None:  # a chat's edits across replicas (`bus/locks.py`)
        held = client.lock(locked, timeout=TTL_S, blocking_timeout=1)
        if await held.acquire():
            await held.release()

    async def sets() -> None:  # the Engine.IO sessions of each replica
        await (
            client.pipeline(transaction=False)
            .sadd(members, "m")
            .pexpire(members, TTL_S * 1000)
            .execute()
        )
        await client.sismember(members, "m")
        await client.srem(members, "m")

    async def streams() -> None:  # the replay journal
        try:
            await (
                client.pipeline(transaction=False)
                .xadd(stream, {"e": "1"}, minid="0", approximate=False)
                .pexpire(stream, TTL_S * 1000)
                .execute()
            )
        except ResponseError as exc:
            if any(sign in str(exc).lower() for sign in _NO_MINID) and not _acl(str(exc)):
                raise _TooOld from None
            raise
        await client.xrange(stream, count=1)

    async def transaction() -> None:  # a replica's close (MULTI checks each command)
        await client.pipeline(transaction=True).ping().execute()  # PING: reached already

    async def pubsub() -> None:  # the rooms, the registry's control channel
        await client.publish(string, "check")
        listener = client.pubsub()
        try:
            await listener.subscribe(string)
            said = None
            while said is None:  # until the subscription is confirmed or refused (bounded)
                said = await listener.get_message(timeout=1.0)
            await listener.unsubscribe(string)
        finally:
            await listener.aclose()

    async def scan() -> None:  # finding the replicas' beats
        await client.scan(0, match=f"{string}*", count=10)

    async def cleanup() -> None:
        await client.delete(*keys)

    kinds: list[tuple[str, Try]] = [
        ("SET … EX, PEXPIRE", expiring),
        ("MGET", strings),
        ("HSET, HSETNX, HGETALL, HKEYS, HDEL", hashes),
        ("the bus's scripts (SCRIPT LOAD, EVALSHA, EVAL; HGET, HSET, HDEL, HGETALL)", scripts),
        ("a chat's edit lock (SET … PX NX; its release script: GET, DEL)", lock),
        ("SADD, SISMEMBER, SREM", sets),
        ("XADD … MINID, XRANGE", streams),
        ("MULTI/EXEC", transaction),
        ("PUBLISH, SUBSCRIBE, UNSUBSCRIBE", pubsub),
        ("SCAN", scan),
        ("DEL", cleanup),
    ]
    found: list[str] = []
    for names, attempt in kinds:
        try:
            await attempt()
        except _TooOld:
            found.append(f"{names}: Redis 6.2 or later is needed (XADD … MINID)")
        except ResponseError as exc:
            found.append(f"{names}: {_why(exc)}")
            if attempt is expiring:
                found[-1] += " (nothing else tried: it could not be made to expire)"
                break
    return found
