"""Compact JSON text, written once for every wire and the store; JSON read fast.

    {"type":"text-delta","text":"Grüße ✓"}      no spaces; non-ASCII as is (UTF-8 on
                                                the wire, a third of `\\u00fc` escapes)

A leaf module: codecs, the bus, the store and the upstream all import it, so
it imports nothing of ours (a home in `events.py` would make the store depend
on the canonical events for a JSON helper).

Two helpers of the hot path go through orjson, which takes a fifth to a
quarter of `json`'s time on a delta's text or a model server's chunk
(bench/RESULTS.md, "Levers"), and fall back to `json` for whatever orjson
refuses, so the answers are `json`'s:

* `string` and `text` write a string as `dumps` does, byte for byte, as
  text or in UTF-8 (a lone surrogate, which orjson refuses, goes to `json`);
* `plain` writes a value of strings, integers, booleans, None, lists and
  dicts keyed by strings (a delta's Socket.IO envelope) as `dumps` does, byte
  for byte, or says None where orjson refuses it (a lone surrogate, an integer
  past 64 bits), for the caller's own way;
* `loads` reads the same values as `json.loads`, and raises the same
  `ValueError` for what neither reads (nesting deeper than both read, about
  1,000 levels, is a `ValueError` too, never a `RecursionError`); what
  orjson refuses and `json` reads (a lone surrogate escape, NaN, Infinity, a
  number past a double) is read by `json`.  Integers past 64 bits come out
  as floats, so it reads a model server's chunks (whose only numbers are
  token counts), never what a client sent: the bus, the store and the codecs
  keep `json.loads`, and what clients send reaches its subscribers as sent.

* `body` writes a request body for a model server in UTF-8, whatever its size:
  a stored chat's whole history goes out with every turn (0.5 MB: `json`
  3.9 ms of the event loop, orjson 0.1 ms). It is not byte for byte `json`'s
  (a float's exponent may be shorter), which no server reads differently;
  what orjson refuses (an integer past 64 bits, a lone surrogate, nesting
  past 254 levels) is written by `json` as before, and NaN, which orjson
  would write as `null`, cannot reach it: clients' JSON refuses it
  (`text.client_json`).

`dumps` stays `json`'s for every other value: orjson writes NaN and Infinity
as `null` and a small float's exponent without its leading zero, and what is
stored must read back as it was sent.  `tests/flavours/test_jsonwire.py`
holds the helpers to `json` on random values.
"""

from __future__ import annotations

import json
from copy import deepcopy
from typing import Any

import orjson


def dumps(value: Any) -> str:
    """`value` as compact JSON text: the byte-exact form the golden vectors pin."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def string(value: str) -> str:
    """A string as `dumps` writes it (a lone surrogate, which orjson refuses, is kept
    as `dumps` keeps it)."""
    written = plain(value)
    return dumps(value) if written is None else written


def text(value: str) -> bytes:
    """A string as `dumps` writes it, in UTF-8 (a lone surrogate, which no UTF-8
    carries, raises `UnicodeEncodeError` as `dumps(value).encode()` does)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return dumps(value).encode()


def plain(value: Any) -> str | None:
    """`value` (strings, integers, booleans, None, lists, dicts keyed by strings) as
    `dumps` writes it; None where orjson refuses it."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return None


def body(value: Any) -> bytes:
    """A model server's request body as UTF-8 JSON (see above); `RecursionError`
    for what is nested past writing, as `json.dumps` raises it."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()


def copy(value: Any) -> Any:
    """A deep copy of a JSON value (a chat's history: what a client sent, what the
    store read) through orjson, about a fiftieth of `copy.deepcopy`'s time on a
    value of many small parts (a message field of 1.3 million empty lists, which
    a probe sent: 1 s of the loop); `copy.deepcopy` for what orjson refuses or
    would write as something else (an integer past 64 bits, a lone surrogate, a
    subclass, a dataclass, a key that is no string, nesting past 254 levels).
    For JSON values only: what JSON cannot hold comes back as JSON would have it
    (a tuple as a list, NaN as None), and no history holds that (clients' JSON
    refuses NaN: `text.client_json`)."""
    try:
        return orjson.loads(orjson.dumps(value, option=_EXACT))
    except (orjson.JSONEncodeError, orjson.JSONDecodeError):
        return deepcopy(value)


# What orjson writes in its own way (a dataclass as an object, a str subclass as a
# string…) refused instead, so `copy` leaves it to `deepcopy`.
_EXACT = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def loads(raw: str | bytes) -> Any:
    """JSON as Python values, as `json.loads` reads it but for integers past 64 bits
    (see above); `ValueError` when it is not JSON or is nested too deeply."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json_loads(raw)


def _json_loads(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
