"""Text every store can hold: no NUL character, no lone UTF-16 surrogate.

PostgreSQL refuses NUL in text (and SQLite would keep it, unlike PostgreSQL), and
neither can encode a lone surrogate (JSON's "\\ud83d" without its pair, or UTF-8
bytes of one) as UTF-8: either failed the request with a 500.  Open WebUI strips
both before storing (`sanitize_text_for_db`); so does the gateway, in two places:
where a JSON body is read (so what a route answers is what it stored) and in the
database drivers, for every argument of every statement, so no route, flavour
or upstream can bring such text to a store.

A leaf module, like `jsonwire.py`: the store, the routes and the codecs import it.
A model server's text is made `encodable` where it is read (a lone surrogate
becomes U+FFFD, so every client encoding can carry it).  It also cuts a WebSocket
close frame's reason to size without splitting a character (`close_reason`), and
escapes a client's control characters for a header or a log line (`printable`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` without NUL characters and lone surrogates (a valid pair is one
    character in Python, never two surrogates)."""
    if text.isascii():
        return text.replace("\x00", "") if "\x00" in text else text
    return _UNSTORABLE.sub("", text)


def storable_value(value: Any) -> Any:
    """A JSON value with every string storable, keys included (a key that becomes
    another one's twin is merged into it, the later one winning)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {
            (storable(key) if isinstance(key, str) else key): storable_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [storable_value(item) for item in value]
    return value


def storable_args(args: Sequence[Any]) -> Sequence[Any]:
    """A statement's arguments, each string storable (the tuple itself when none changes)."""
    if any(isinstance(arg, str) and _unstorable(arg) for arg in args):
        return tuple(storable(arg) if isinstance(arg, str) else arg for arg in args)
    return args


def _unstorable(text: str) -> bool:
    if text.isascii():
        return "\x00" in text
    return _UNSTORABLE.search(text) is not None


def client_json(raw: str | bytes) -> Any:
    """JSON a client sent, parsed: `ValueError` for what is not JSON or is nested
    too deeply for the parser (Python's recursion limit, about 1,000 levels: no
    chat client nests a tenth of that), every string storable.  `NaN`,
    `Infinity`, numbers past a double (`1e999`) and integers past 64 bits are no
    JSON here (Python's reader takes them): relayed, they made a body a model
    server could not read."""
    try:
        value = json.loads(
            raw, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_int64
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    # NUL and lone surrogates reach a string only through a \u escape (or, in
    # bytes, the UTF-8 bytes of a surrogate, which json.loads lets through; a str
    # decoded from UTF-8 holds none).
    # (json.loads reads UTF-16 and UTF-32 bodies too: their NUL bytes say so.)
    escaped = (
        b"\\u" in raw or b"\xed" in raw or b"\x00" in raw
        if isinstance(raw, bytes)
        else "\\u" in raw
    )
    if not escaped:
        return value
    try:
        return storable_value(value)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _int64(text: str) -> int:
    # Past 64 bits no chat client writes a number (JavaScript's are exact to 2**53),
    # no model server reads one, and orjson refuses them: one in a chat's history
    # sent its copies back to `copy.deepcopy`, and 4,000 digits cost quadratic time
    # to read and to write again.  Checked by length before it is read.
    if len(text) > _INT64_CHARS or not -(2**63) <= (number := int(text)) < 2**64:
        raise ValueError(f"the integer {text[:40]} is past 64 bits")
    return number


_INT64_CHARS = len(str(-(2**63)))  # 20


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is past a double")
    return number


# The longest close reason a WebSocket close frame carries (RFC 6455 §5.5: a control
# frame's payload is at most 125 bytes, two of them the code).
MAX_CLOSE_REASON_BYTES = 123


def close_reason(text: str) -> bytes:
    """`text` as a close frame's reason: UTF-8, at most 123 bytes, cut between two
    characters (a reason that is not valid UTF-8 makes clients drop the close code)."""
    return storable(text).encode()[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode()


# Control characters, and the backslash that starts an escape (so an escaped CR is
# told from the text "\\x0d").
_CONTROL = re.compile("[\x00-\x1f\x7f\\\\]")


def printable(text: str) -> str:
    """`text` with its control characters (and backslashes) written as `\\xNN`: a
    client's text in a header or a log line, which a CR, LF or NUL would split or
    corrupt."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match[0]):02x}"


def encodable(text: str) -> str:
    """The text with lone UTF-16 surrogates (JSON "\\ud83d" without its pair, which a
    broken tokenizer can send) replaced by U+FFFD: no client encoding can carry them.
    (json.loads joins the valid pairs, so any surrogate left is a lone one.)  NUL
    characters are dropped: no store can hold them, and no reply needs them."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return text
