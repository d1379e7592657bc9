"""Failed sign-ins, counted per account and per client address, refused past a limit.

Each key (an e-mail; an address, IPv6 by its /64) may fail `max_failures`
times within `window_s`. The failure that reaches the limit locks the key for
`window_s`, the next lock lasts twice as long, and so on up to
`max_lockout_s`; after `max_lockout_s` without a new lock the doubling starts
over. Locks are temporary on purpose: a permanent one would let anyone lock
anyone out (OWASP, Authentication Cheat Sheet).

While a key is locked its attempts are refused (429, `Retry-After`) before any
password is checked — the right one too, or the answer would tell the attacker
which guess was right — so a refused attempt costs no hash. An attempt under
way counts as a failure until it ends, so 30 guesses sent at once cannot all
slip under a limit of 5. A success clears the account's record; the
address's stays (a guesser with an account of their own must not reset their
count for guesses at others). Accounts are tracked by the e-mail as typed,
whether or not it exists, so the 429 tells nothing about who has an account.

The records live in this process: with N replicas an attacker gets up to N
times the budget (still bounded). Each table holds at most `max_keys`
records, keys of at most `MAX_KEY_CHARS`; past that the least recently used
record is forgotten.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import PeerError, RateLimited

# Records per table (accounts, addresses): 300 bytes and the key each, so the two
# tables hold 50 MB at most (keys cut to MAX_KEY_CHARS), about 30 MB with real e-mails.
MAX_KEYS = 50_000
# No e-mail address is longer (RFC 5321 allows 254), so no two real ones share a key.
MAX_KEY_CHARS = 320
# Retry-After while only attempts under way fill the limit: they end within a hash.
PENDING_RETRY_AFTER_S = 1.0


@dataclass(slots=True)
class _Record:
    failures: list[float] = field(default_factory=list)  # times, within the window (few)
    pending: int = 0  # attempts under way
    strikes: int = 0  # locks in a row: the next one lasts window × 2**strikes
    locked_until: float = 0.0


class FailureThrottle:
    def __init__(
        self,
        max_failures: int,
        window_s: float,
        max_lockout_s: float,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_lockout_s = max_lockout_s
        self.max_keys = max_keys
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def wait_s(self, key: str) -> float:
        """0 when `key` may try now, else the seconds until it may."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        now = self._clock()
        if record.locked_until > now:
            return record.locked_until - now
        self._expire(record, now)
        if len(record.failures) + record.pending >= self.max_failures:
            return PENDING_RETRY_AFTER_S
        return 0.0

    def begin(self, key: str) -> _Record:
        """An attempt starts; end it with `end` (the record, not the key: the key's
        record may have been forgotten meanwhile)."""
        now = self._clock()
        self._forget_stale(now)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
            if len(self._records) > self.max_keys:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        record.pending += 1
        return record

    def end(self, record: _Record, failed: bool) -> None:
        record.pending -= 1
        if not failed:
            return
        now = self._clock()
        self._expire(record, now)
        record.failures.append(now)
        if len(record.failures) >= self.max_failures:
            record.locked_until = now + min(self.window_s * 2**record.strikes, self.max_lockout_s)
            record.strikes += 1
            record.failures.clear()

    @staticmethod
    def clear(record: _Record) -> None:
        record.failures.clear()
        record.strikes = 0
        record.locked_until = 0.0

    def _expire(self, record: _Record, now: float) -> None:
        while record.failures and record.failures[0] <= now - self.window_s:
            del record.failures[0]
        if record.strikes and now - record.locked_until > self.max_lockout_s:
            record.strikes = 0

    def _stale(self, record: _Record, now: float) -> bool:
        self._expire(record, now)
        return not (record.failures or record.pending or record.strikes)

    def _forget_stale(self, now: float) -> None:
        # Least recently used first: stop at the first record still of use.
        while self._records:
            key, record = next(iter(self._records.items()))
            if not self._stale(record, now):
                return
            del self._records[key]


def address_key(address: str | None) -> str:
    """The client an address stands for: IPv6 by its /64 (one host usually has a
    whole /64 to pick addresses from), IPv4-mapped IPv6 as IPv4."""
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SignInThrottle:
    def __init__(
        self,
        per_account: int,
        per_address: int,
        window_s: float,
        max_lockout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.accounts = FailureThrottle(per_account, window_s, max_lockout_s, clock=clock)
        self.addresses = FailureThrottle(per_address, window_s, max_lockout_s, clock=clock)

    def admit(self, email: str, address: str | None) -> SignInAttempt:
        """An attempt may go ahead, or RateLimited (one message whichever limit bit)."""
        account = email.strip().lower()[:MAX_KEY_CHARS]
        client = address_key(address)[:MAX_KEY_CHARS]
        wait = max(self.accounts.wait_s(account), self.addresses.wait_s(client))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            unit = "second" if seconds == 1 else "seconds"
            raise RateLimited(
                f"Too many failed sign-in attempts. Try again in {seconds} {unit}.",
                retry_after_s=seconds,
            )
        return SignInAttempt(self, self.accounts.begin(account), self.addresses.begin(client))


class SignInAttempt:
    """One admitted attempt; exactly one of its three endings is called."""

    def __init__(self, throttle: SignInThrottle, account: _Record, address: _Record) -> None:
        self._throttle = throttle
        self._account = account
        self._address = address

    def failed(self) -> None:
        self._throttle.accounts.end(self._account, failed=True)
        self._throttle.addresses.end(self._address, failed=True)

    def succeeded(self) -> None:
        self._throttle.accounts.end(self._account, failed=False)
        self._throttle.accounts.clear(self._account)
        self._throttle.addresses.end(self._address, failed=False)

    def abandoned(self) -> None:
        """Neither: the check did not run to the end (server busy, store down)."""
        self._throttle.accounts.end(self._account, failed=False)
        self._throttle.addresses.end(self._address, failed=False)


# A connection that sends more than this many times its burst past its rate within
# one second is flooding, not typing fast: its frames cost the loop their reading
# whether or not they are handled (a probe's 100,000 empty pings a second held
# every other client's replies for 0.6 s at a time), so it is cut off.
FLOOD_BURSTS = 10

# Frames a socket's reader takes one after another before the loop gets a turn
# (the raw WebSocket's `_read`, Engine.IO's websocket `wait`): frames already
# buffered come from aiohttp's `receive()` without a wait, and a flood of tiny
# ones (a probe's 100,000 empty pings in one write) was read in one go, 0.2–0.9 s
# in which no other client got anything.
FRAMES_PER_TURN = 64


class MessageRate:
    """Messages from one connection, a token bucket: `per_s` a second on average,
    bursts of up to `2 × per_s`; None for no limit.  `allow()` says whether this
    message may be handled; `tell()` whether to say so to the client (at most
    once a second, so the refusals cannot become a flood of their own);
    `flooding()` whether the connection is to be cut off (`FLOOD_BURSTS`)."""

    __slots__ = ("_burst", "_clock", "_last", "_per_s", "_refused", "_since", "_tokens", "_told")

    def __init__(self, per_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_s = per_s
        self._burst = 2 * per_s if per_s is not None else 0.0
        self._tokens = self._burst
        self._last = clock()
        self._told = -math.inf
        self._clock = clock
        # Refused since `_since`, a window of a second at most.
        self._refused = 0
        self._since = -math.inf

    def allow(self) -> bool:
        if self._per_s is None:
            return True
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_s)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        if now - self._since >= 1.0:
            self._since, self._refused = now, 0
        self._refused += 1
        return False

    def flooding(self) -> bool:
        """More than FLOOD_BURSTS × the burst refused within a second."""
        return self._per_s is not None and self._refused > FLOOD_BURSTS * self._burst

    def tell(self) -> bool:
        now = self._clock()
        if now - self._told < 1.0:
            return False
        self._told = now
        return True

    def error(self) -> RateLimited:
        return RateLimited(
            f"Too many messages: at most {self._per_s:g} a second on one connection; "
            "this one was dropped",
            retry_after_s=1,
        )

    def flood_error(self) -> PeerError:
        """Why a flooding connection is cut off (1008 on a WebSocket)."""
        return PeerError(
            f"Too many messages: over {FLOOD_BURSTS * self._burst:g} in a second past the "
            f"rate of {self._per_s:g} a second; the connection is closed"
        )
