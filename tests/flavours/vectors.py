"""What every flavour's golden-vector test reads the same way: the vector files and
the events they name.

Vectors are written once and kept byte for byte, so they may name an event by
an older name: `RENAMED_EVENTS` maps those to today's class, `RETIRED_EVENTS`
lists events that no longer exist (as those vectors say, they encode to nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway import events

# Vectors written before ChatTitleChanged was retired (ReplyFinished.title is the one
# carrier of a title now) still name it.
RETIRED_EVENTS = frozenset({"ChatTitleChanged"})
# Vectors written before the event of a user typing was named apart from the
# command (`commands.Typing`, what a client sends).
RENAMED_EVENTS = {"Typing": "UserTyping"}


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def exact(value: Any) -> str:
    """JSON text for comparing parsed values: `true` is not `1`; key order is free
    (docs/PROTOCOLS.md leaves it free); a tuple is a list."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def event_class(name: str) -> type[Any]:
    return events.EVENT_TYPES[RENAMED_EVENTS.get(name, name)]


def build_event(spec: dict[str, Any]) -> events.Event:
    """An event from a vector's `{"event": <class name>, <fields>}`."""
    fields = dict(spec)
    kind = event_class(fields.pop("event"))
    if "usage" in fields:
        fields["usage"] = events.Usage(**fields["usage"])
    event: events.Event = kind(**fields)
    return event
