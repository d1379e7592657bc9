"""Secrets out of everything an operator reads: CLI output, errors and log lines.

Two kinds of secret are masked:

* the password part of a URL's user info (`postgresql://gw:s3cret@db/gw` →
  `postgresql://gw:***@db/gw`), and the value of a query or fragment parameter
  named like a secret (`redis://r/0?password=…`, `…/v1?api_key=…`,
  `?sslpassword=…`, `#access_token=…`: redis-py, asyncpg and some model servers
  take them there), wherever such a URL appears in a text;
* tokens by their shape: API keys (ours, `sk-` + 32 hex and `ragflow-` + 43
  url-safe characters, and any `sk-` + 20 or more key characters, as OpenAI's
  and others' are), JWTs (three base64url parts, the first `eyJ`), and
  any configured secret registered with `Redactor.add` (the signing key, the
  model servers' API keys, static keys), which have no shape of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

# scheme://user:password@  — the password is everything up to the last "@"
# of the authority (a password may itself hold "@" or ":").  Its parts are
# bounded: every line is masked, and the unbounded pattern was quadratic on a
# long run of "x.x.x…".
# In a text the password stops at a "/" (a run of "x://y:" would otherwise be
# scanned 1,024 characters from each start) and at a raw double quote or
# backslash (a JSON log line must stay JSON; an escaped one, `\"`, is stepped
# over); a user name may hold a "/".  A password with a raw "/", "?" or "#" is
# refused by the settings, and `url()` masks it to the last "@" where a
# refusal shows it.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^\s:@\"\\]{0,256}:)(?:[^/\s\"\\]|\\.){0,1024}@"
)
# ?password=… / &api_key=… / #access_token=… — a query (or fragment) parameter
# whose name ends in a word that says it is a secret (`clientSecret`,
# `sslpassword`, `x-api-key`).  Its value runs to what ends a parameter; in a
# text, also to a double quote or a backslash (a JSON log line must stay JSON).
_SECRET_NAME = (
    r"(?P<head>[?&#][\w.-]{0,128}?"
    r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|key|auth(?:orization)?|sig(?:nature)?"
    r"|credentials?)=)"
)
_QUERY_SECRET = re.compile(_SECRET_NAME + r"[^&#\s]+", re.IGNORECASE)
_QUERY_SECRET_IN_TEXT = re.compile(_SECRET_NAME + r"[^&#\s\"\\]+", re.IGNORECASE)
_TOKENS = re.compile(
    r"\bsk-[A-Za-z0-9_-]{20,}"  # ours (sk- + 32 hex), and OpenAI's and others' sk-…
    r"|\bragflow-[A-Za-z0-9_-]{43}\b"
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"
)
# Configured secrets shorter than this are not masked by value: masking "a"
# would mangle every line, and a secret that short is no secret anyway.
MIN_SECRET_CHARS = 6


def url(value: str) -> str:
    """A URL with its password and secret parameters masked, as written otherwise
    (`sqlite:///…` stays so); a token-shaped value masked too (a key written where
    a URL belongs)."""
    masked = _QUERY_SECRET.sub(_head_masked, value)
    scheme, sep, rest = masked.partition("://")
    info, at, host = rest.rpartition("@")
    user, colon, _ = info.partition(":")
    if sep and at and colon:
        # The password runs to the last "@", raw "/", "?" or "#" in it included
        # (`urlsplit` would end the host part at the first of them and show the rest).
        masked = f"{scheme}://{user}:{MASK}@{host}"
    return _TOKENS.sub(MASK, masked)


def passwords(urls: Iterable[str | None]) -> list[str]:
    """The passwords in configured URLs, as written and percent-decoded: secrets
    for `Redactor`, so a log line is masked by value where the patterns of
    `text()` stop early (at a raw double quote, in a text-format line)."""
    found = []
    for value in urls:
        _, sep, rest = (value or "").partition("://")
        info, at, _ = rest.rpartition("@")
        _, colon, password = info.partition(":")
        if sep and at and colon and password:
            found += [password, unquote(password)]
    return found


def _head_masked(match: re.Match[str]) -> str:
    return match["head"] + MASK


def text(value: str) -> str:
    """Passwords in URLs and token-shaped strings masked, anywhere in a text."""
    value = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", value)
    value = _QUERY_SECRET_IN_TEXT.sub(_head_masked, value)
    return _TOKENS.sub(MASK, value)


class Redactor:
    """`text()` plus the exact values of configured secrets."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        self._secrets.update(s for s in secrets if len(s) >= MIN_SECRET_CHARS)
        # Longest first: a secret that contains another is masked whole.
        self._ordered = sorted(self._secrets, key=len, reverse=True)

    def __call__(self, value: str) -> str:
        for secret in self._ordered:
            if secret in value:
                value = value.replace(secret, MASK)
        return text(value)
