"""A connection authenticated just before its key was revoked (or its user removed)
and holding its lease only after the revocation was seen: ended all the same.

The window is real on every transport: a socket authenticates, then joins its
rooms (on Redis, a round trip) and only then holds its lease; a revocation seen
in between used to be missed for good (found by probing two replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.application.access import KEY_REVOKED, USER_REMOVED, AccessGuard
from gateway.edge.auth import Principal
from gateway.store import Revocation


class NoStore:
    async def revocations_since(self, since_ms: int) -> list[Revocation]:
        return []


async def nothing(user_id: str) -> None:
    return None


@pytest.fixture
async def guard() -> AsyncIterator[AccessGuard]:
    guard = AccessGuard(NoStore(), 60.0, nothing)  # type: ignore[arg-type]
    yield guard
    await guard.close()


async def ended_after_hold(guard: AccessGuard, principal: Principal) -> list[str]:
    ends: list[str] = []
    lease = guard.hold(principal, ends.append)
    assert ends == []  # never while the transport is still setting the connection up
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    lease.release()
    return ends


async def test_a_lease_held_after_its_keys_revocation_ends_at_once(guard: AccessGuard) -> None:
    await guard.revoked(Revocation("u1", "hash-a", "revoked", 1_000))
    assert await ended_after_hold(guard, Principal("u1", "U", key_hash="hash-a")) == [KEY_REVOKED]
    # The same user's other key, and their JWT, are not touched.
    assert await ended_after_hold(guard, Principal("u1", "U", key_hash="hash-b")) == []
    assert await ended_after_hold(guard, Principal("u1", "U")) == []
    assert await ended_after_hold(guard, Principal("u2", "V", key_hash="hash-a")) == []


async def test_a_lease_held_after_its_users_removal_ends_at_once(guard: AccessGuard) -> None:
    await guard.revoked(Revocation("u1", "", "removed", 1_000))
    assert await ended_after_hold(guard, Principal("u1", "U")) == [USER_REMOVED]
    assert await ended_after_hold(guard, Principal("u1", "U", key_hash="k")) == [USER_REMOVED]


async def test_a_lease_released_before_the_late_end_runs_is_not_ended(guard: AccessGuard) -> None:
    await guard.revoked(Revocation("u1", "hash-a", "revoked", 1_000))
    ends: list[str] = []
    guard.hold(Principal("u1", "U", key_hash="hash-a"), ends.append).release()
    await asyncio.sleep(0)
    assert ends == [] and guard.connections("u1") == 0
