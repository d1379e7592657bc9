"""Compact JSON text, written once for every wire and the store.

    {"type":"text-delta","text":"Grüße ✓"}      no spaces; non-ASCII as is (UTF-8 on
                                                the wire, a third of `\\u00fc` escapes)

A leaf module: codecs, the bus, the store and the upstream all import it, so
it imports nothing of ours (a home in `events.py` would make the store depend
on the canonical events for a JSON helper).
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """`value` as compact JSON text: the byte-exact form the golden vectors pin."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
