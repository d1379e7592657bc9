"""One reply at a time into a message, across replicas (`WEBSOCKET_MANAGER=redis`):
the messages replies are being started or run into, held in one Redis hash.

    answering   hash   [chat id, message id] → the claim holding it:
                       "<replica id> <claim id>", a claim id new at every claim;
                       ["user", user id, message id] → the same claim: a user's
                       replies run under different ids, whatever their chats
                       (their events are found by the user and the id alone)

    claim(chat, ids)    one round trip (a script): every message free or this
                        replica's, then all of them this replica's; else the
                        first one another replica holds, and nothing held
    unclaim(chat, ids)  queued (never blocks): each message let go if this
                        claim still holds it, so a let-go that reaches Redis
                        after a new claim of the same message leaves that one
    rewrite(pipe)       after a reconnect: what this replica holds, written
                        again where nobody took it meanwhile
    forget(pipe, id)    every message a replica holds let go (it closes, or it
                        died and a survivor has ended its replies, so a new
                        reply cannot be overwritten by the dead one's end)

A replica's own entries are free to it: it refuses its own duplicates itself
(`RunningReplies.claim`), and an entry of its own still in Redis is a let-go
on its way.  With Redis unreachable (the registry's listener down) or slower
than `CLAIM_TIMEOUT_S`, `claim` does not wait: it says so in the log (at most
every 10 s), the turn goes on refused only by this replica's own check, and
the hold is written when the registry reconnects (`rewrite`), unless another
replica took the message meanwhile (after a timeout the script may also have
run).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from gateway.bus.link import Complaints, Sender

# The longest a reply's start waits for Redis to say whether its message is free.
CLAIM_TIMEOUT_S = 0.5

# Each held message's value is its holder's claim: "<replica id> <claim id>", a claim
# id new at every claim, so a let-go that arrives late (queued, sent after a new
# claim of the same message by the same replica) removes nothing but its own.
#
# The scripts are public for `check.py`, which runs them to see Redis allows them.
#
# KEYS[1]: the `answering` hash; ARGV[1]: this replica's id and a space; ARGV[2]: the
# claim; ARGV[3…]: the messages.  Returns the first message another replica holds,
# or nothing once all are held.  This replica's own entries are free: it refuses its
# own duplicates itself (`RunningReplies.claim`), and an entry of its own still in
# Redis is a let-go on its way.
CLAIM = """
for i = 3, #ARGV do
  local holder = redis.call('HGET', KEYS[1], ARGV[i])
  if holder and string.sub(holder, 1, #ARGV[1]) ~= ARGV[1] then return ARGV[i] end
end
for i = 3, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[2]) end
return false
"""
# ARGV: message, claim, message, claim…: each message let go if that claim holds it.
UNCLAIM = """
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0
"""
# ARGV[1]: a replica's id and a space: every message it holds let go (it died, or is
# closing).
FORGET = """
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i + 1], 1, #ARGV[1]) == ARGV[1] then
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
return 0
"""


def message_field(chat_id: str, message_id: str) -> str:
    """A message's field in `answering` (ids are the clients': any text)."""
    return json.dumps([chat_id, message_id])


def user_field(user_id: str, message_id: str) -> str:
    """A user's reply id's field in `answering`, whichever chat it is in."""
    return json.dumps(["user", user_id, message_id])


def _fields(chat_id: str, message_ids: list[str], user_id: str) -> list[tuple[str, str]]:
    """Each field a claim holds and its message: the chat's first, so a message held
    in this very chat is named as such; then the user's, when known."""
    held = [(message_field(chat_id, message_id), message_id) for message_id in message_ids]
    if user_id:
        held += [(user_field(user_id, message_id), message_id) for message_id in message_ids]
    return held


class Claims:
    def __init__(
        self,
        redis: aioredis.Redis,
        sender: Sender,
        key: str,
        replica_id: str,
        reachable: Callable[[], bool],
    ) -> None:
        self._redis = redis
        self._sender = sender
        self._key = key
        self._mine = replica_id + " "
        self._reachable = reachable
        self._claimed: dict[str, str] = {}  # the fields held here → their claim
        self._claim = redis.register_script(CLAIM)
        self._failed = Complaints(
            "could not ask Redis whether a message is free: only this replica's replies checked"
        )

    async def claim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> str | None:
        held_fields = _fields(chat_id, message_ids, user_id)
        fields = [field for field, _ in held_fields]
        claim = self._mine + uuid.uuid4().hex[:12]
        for field in fields:  # let go by `unclaim` whatever the answer
            self._claimed[field] = claim
        if not self._reachable():
            self._failed.note(error="Redis is unreachable")
            return None
        try:
            held = await asyncio.wait_for(
                self._claim(keys=[self._key], args=[self._mine, claim, *fields]),
                CLAIM_TIMEOUT_S,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed.note(error=str(exc) or type(exc).__name__)
            return None
        if held is None:
            return None
        self.unclaim(chat_id, message_ids, user_id)
        return held_fields[fields.index(str(held))][1]

    def unclaim(self, chat_id: str, message_ids: list[str], user_id: str = "") -> None:
        pairs: list[str] = []
        for field, _ in _fields(chat_id, message_ids, user_id):
            claim = self._claimed.pop(field, None)
            if claim is not None:
                pairs += [field, claim]
        if pairs:
            self._sender.command("eval", UNCLAIM, 1, self._key, *pairs)

    def rewrite(self, pipe: Pipeline) -> None:
        for field, claim in self._claimed.items():  # (not over another's, taken meanwhile)
            pipe.hsetnx(self._key, field, claim)

    async def held(self) -> dict[tuple[str, str], str]:
        """Every message held, by any replica: (chat id, message id) → its holder's
        replica id (a user's fields, and entries that are not ours, left out)."""
        raw = cast(dict[str, str], await self._redis.hgetall(self._key))
        held = {}
        for field, claim in raw.items():
            try:
                key = json.loads(field)
            except ValueError:
                continue
            if isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key):
                held[(key[0], key[1])] = claim.partition(" ")[0]
        return held

    def forget(self, pipe: Pipeline, replica_id: str) -> None:
        pipe.eval(FORGET, 1, self._key, replica_id + " ")
