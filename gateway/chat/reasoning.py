"""A reply's reasoning apart from its answer, as Open WebUI 0.12.4 makes it (pure).

Models write their reasoning in the text, between tags Open WebUI recognises
(`utils/middleware.py`, `DEFAULT_REASONING_TAGS`), or send it apart
(`reasoning_content`, `reasoning`: `upstream/chunks.py`).  `Splitter` cuts the
streamed text, piece by piece as it arrives::

    "<think>\\nLet me see… </think>\\n\\nParis."  → reasoning "Let me see…", text "Paris."

* a start tag may carry attributes (`<think effort="low">`); `<|begin_of_solution|>`
  … `<|end_of_solution|>` holds the answer (its tags go, its text stays);
* the reasoning is stripped, and so is the whitespace right after an end tag
  (Open WebUI's `.strip()` and `.lstrip()`), whatever the pieces;
* a tag cut between two pieces is held back until it is whole (or is not a tag);
* a tag never closed ends with the reply: everything after it is reasoning.

`Output` puts the pieces in Open WebUI's `output` items, what 0.12.4 stores with
an assistant message and its web app renders (a reasoning item collapsed under
"Thought for N seconds")::

    [{"type": "reasoning", "id", "status": "completed", "content": [{"type":
      "output_text", "text"}], "summary": None, "duration": 3, ...},
     {"type": "message", "id", "status": "completed", "role": "assistant",
      "content": [{"type": "output_text", "text": "Paris."}]}]

and says which item each streamed piece belongs to (`events.TextDelta.item`,
`ReasoningDelta.item`), so the web app can show the reasoning while it streams.
`content` is the answer as Open WebUI keeps it in `content`: the message items'
text, blank ones left out, joined by a newline, the last one stripped.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.events import output_item_id

# Open WebUI 0.12.4's DEFAULT_REASONING_TAGS and DEFAULT_SOLUTION_TAGS.
REASONING_TAGS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<reason>", "</reason>"),
    ("<reasoning>", "</reasoning>"),
    ("<thought>", "</thought>"),
    ("<Thought>", "</Thought>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
    ("◁think▷", "◁/think▷"),
)
SOLUTION_TAGS: tuple[tuple[str, str], ...] = (("<|begin_of_solution|>", "<|end_of_solution|>"),)

TEXT = "text"
REASONING = "reasoning"
# A piece with no text between two blocks: a tag opened or closed.
BREAK = "break"

Piece = tuple[str, str]  # (TEXT | REASONING | BREAK, text)
# The longest start tag with attributes (`<think effort="low">`).  Without a bound,
# a line that began `<think ` and never closed its `>` was held back whole, copied
# and searched again at each piece of the reply: a review's 80 KB line cost 15 s of
# the loop.  Longer is text, as a line with no `>` at all is.
MAX_TAG_CHARS = 256


def _start_pattern(tag: str) -> str:
    # As Open WebUI's `_start_tag_pattern`: `<name>` also matches `<name attr="…">`,
    # on one line (Open WebUI's pattern lets a line end follow the name: not here),
    # at most MAX_TAG_CHARS long.
    if tag.startswith("<") and tag.endswith(">") and tag[1:2] not in ("|", "/"):
        attributes = MAX_TAG_CHARS - len(tag) - 1
        return re.escape(tag[:-1]) + rf"(?:[^\S\n][^>\n]{{0,{attributes}}})?>"
    return re.escape(tag)


def _could_start(tail: str, tags: tuple[tuple[str, str, str], ...]) -> bool:
    """Whether `tail` (from a tag's first character to the end) may still grow into
    one of the start tags."""
    if len(tail) >= MAX_TAG_CHARS:
        return False
    for start, _, _ in tags:
        if start.startswith(tail):
            return True
        named = start[:-1]
        if (
            start.startswith("<")
            and start[1:2] not in ("|", "/")
            and tail.startswith(named)
            and len(tail) > len(named)
            and tail[len(named)].isspace()
            and ">" not in tail
            and "\n" not in tail
        ):
            return True
    return False


_SOLUTIONS = tuple((start, end, TEXT) for start, end in SOLUTION_TAGS)
# The tags looked for, by whether reasoning tags still are (`Splitter.reasoning_tags`).
_TAGS = {
    False: _SOLUTIONS,
    True: _SOLUTIONS + tuple((start, end, REASONING) for start, end in REASONING_TAGS),
}


@functools.cache
def _start_re(tag: str) -> re.Pattern[str]:
    return re.compile(_start_pattern(tag))


def _any_first(tags: tuple[tuple[str, str, str], ...]) -> re.Pattern[str]:
    """Any first character of these start tags: text without one holds no tag and
    nothing that may grow into one (the common case, a chunk of plain answer)."""
    return re.compile("[" + re.escape("".join(sorted({start[0] for start, _, _ in tags}))) + "]")


# `_any_first` of `_TAGS`, made once: it is asked of every chunk of answer.
_FIRSTS = {looked_for: _any_first(tags) for looked_for, tags in _TAGS.items()}


class Splitter:
    """Streamed answer text in, (kind, text) pieces out; `feed` each piece, then `close`.

    Reasoning tags are looked for until `reasoning_tags` is set False (as Open
    WebUI does once a provider sent its reasoning apart); solution tags always.
    """

    def __init__(self, reasoning_tags: bool = True) -> None:
        self.reasoning_tags = reasoning_tags
        self._block: tuple[str, str] | None = None  # (kind, end tag) inside a block
        self._held = ""  # what may be the beginning of a tag
        self._space = ""  # whitespace inside a block, sent only if more text follows
        self._lead = False  # the start of a block, or just after one: drop whitespace

    def _tags(self) -> tuple[tuple[str, str, str], ...]:
        return _TAGS[self.reasoning_tags]

    def feed(self, text: str) -> list[Piece]:
        pieces: list[Piece] = []
        buffer = self._held + text
        self._held = ""
        while buffer:
            if self._block is None:
                buffer = self._outside(buffer, pieces)
            else:
                buffer = self._inside(buffer, pieces)
        return pieces

    def close(self) -> list[Piece]:
        """The reply ended: what was held back is text (or, in a block never
        closed, the block's own), the whitespace before the end dropped."""
        held, self._held = self._held, ""
        pieces: list[Piece] = []
        if self._block is None:
            if held and not (self._lead and not held.strip()):
                pieces.append((TEXT, held.lstrip() if self._lead else held))
        else:
            self._emit_inside(held, pieces)
        self._space = ""
        return pieces

    # -- answer text, looking for a start tag -------------------------------------
    def _outside(self, buffer: str, pieces: list[Piece]) -> str:
        if self._lead:
            stripped = buffer.lstrip()
            if not stripped:
                return ""
            buffer, self._lead = stripped, False
        if _FIRSTS[self.reasoning_tags].search(buffer) is None:
            pieces.append((TEXT, buffer))
            return ""
        tags = self._tags()
        found: tuple[int, int, str, str] | None = None
        for start, end, kind in tags:
            match = _start_re(start).search(buffer)
            if match and (found is None or match.start() < found[0]):
                found = (match.start(), match.end(), end, kind)
        if found is not None:
            at, after, end, kind = found
            if at:
                pieces.append((TEXT, buffer[:at]))
            pieces.append((BREAK, ""))
            self._block, self._lead, self._space = (kind, end), True, ""
            return buffer[after:]
        cut = self._holdback(buffer, tags)
        if cut:
            pieces.append((TEXT, buffer[:cut]))
        self._held = buffer[cut:]
        return ""

    def _holdback(self, buffer: str, tags: tuple[tuple[str, str, str], ...]) -> int:
        """Where the part that may still become a start tag begins (len: none).  A
        tag never spans a line, so only the last line is looked at."""
        firsts = {start[0] for start, _, _ in tags}
        for index in range(buffer.rfind("\n") + 1, len(buffer)):
            if buffer[index] in firsts and _could_start(buffer[index:], tags):
                return index
        return len(buffer)

    # -- inside a block, looking for its end tag -----------------------------------
    def _inside(self, buffer: str, pieces: list[Piece]) -> str:
        assert self._block is not None
        end = self._block[1]
        at = buffer.find(end)
        if at >= 0:
            self._emit_inside(buffer[:at], pieces)
            pieces.append((BREAK, ""))
            self._block, self._space, self._lead = None, "", True
            return buffer[at + len(end) :]
        keep = next(
            (
                n
                for n in range(min(len(end) - 1, len(buffer)), 0, -1)
                if end.startswith(buffer[-n:])
            ),
            0,
        )
        self._emit_inside(buffer[: len(buffer) - keep], pieces)
        self._held = buffer[len(buffer) - keep :]
        return ""

    def _emit_inside(self, text: str, pieces: list[Piece]) -> None:
        """A block's text, stripped however it was cut: leading whitespace dropped,
        trailing whitespace held until more text shows it was inside."""
        assert self._block is not None
        if self._lead:
            text = text.lstrip()
            if not text:
                return
            self._lead = False
        body = text.rstrip()
        if not body:
            self._space += text
            return
        pieces.append((self._block[0], self._space + body))
        self._space = text[len(body) :]


# -- Open WebUI's output items ------------------------------------------------------
PROVIDER = "provider"  # reasoning sent apart from the text (`reasoning_content`)


@dataclass(slots=True)
class _Item:
    kind: str  # TEXT | REASONING
    parts: list[str] = field(default_factory=list)
    provider: bool = False
    started_at: float = 0.0
    ended_at: float | None = None
    live: int | None = None  # its index in the web app's output while streaming

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Output:
    """A reply's pieces in arrival order → Open WebUI's `output` items and `content`.

    `text` and `reasoning` return the item index a streamed piece goes to in the
    web app (`None`: the piece goes as plain text, `chat:message:delta`, or, for
    reasoning that came after the answer began, only with the finished reply),
    and the text to send now (whitespace that may yet be trimmed waits).
    """

    def __init__(self, message_id: str, clock: Callable[[], float] = time.time) -> None:
        self._message_id = message_id
        self._clock = clock
        self._items: list[_Item] = []
        self._fresh = False  # the next piece of either kind opens a new item
        self.structured = False  # reasoning came before any answer: items shown live
        self._next_live = 0
        self._waiting = ""  # blank text at the start of a live text item
        self._answered = False  # some text that is not blank came
        self._done: list[tuple[int, dict[str, Any]]] = []

    @property
    def has_reasoning(self) -> bool:
        return any(item.kind == REASONING and item.text for item in self._items)

    def brk(self) -> None:
        """A tag opened or closed: what follows is another item."""
        self._fresh = True

    def take_done(self) -> list[tuple[int, dict[str, Any]]]:
        """Reasoning items shown live that have just ended: (index, item), for the
        web app's `response.output_item.done` (their duration, their whole text)."""
        done, self._done = self._done, []
        return done

    def _open(self, kind: str, provider: bool = False, at: int | None = None) -> _Item:
        item = _Item(kind, provider=provider, started_at=self._clock())
        if self._items and self._items[-1].ended_at is None:
            ended = self._items[-1]
            ended.ended_at = item.started_at
            if ended.kind == REASONING and ended.live is not None:
                self._done.append((ended.live, self._shaped(ended, ended.live, "completed")))
        if at is None:
            self._items.append(item)
        else:
            self._items.insert(at, item)
        self._fresh = False
        return item

    def _live(self, item: _Item) -> int | None:
        if not self.structured:
            return None
        if item.live is None:
            item.live, self._next_live = self._next_live, self._next_live + 1
        return item.live

    def text(self, text: str) -> tuple[int | None, str]:
        last = self._items[-1] if self._items else None
        if last is None or last.kind != TEXT or self._fresh:
            if last is not None and last.kind == TEXT and not last.text.strip():
                self._items.pop()  # a blank text item between two blocks is no item
            last = self._open(TEXT)
        last.parts.append(text)
        self._answered = self._answered or (bool(text) and not text.isspace())
        if not self.structured:
            return None, text
        if last.live is None and not (self._waiting + text).strip():
            self._waiting += text
            return None, ""
        send, self._waiting = (self._waiting + text if last.live is None else text), ""
        return self._live(last), send

    def reasoning(self, text: str, provider: bool = False) -> tuple[int | None, str]:
        last = self._items[-1] if self._items else None
        if provider and self._answered:
            # Open WebUI: provider reasoning after the answer began joins the
            # reasoning item before the answer (made if none), done at once.
            found = next((i for i in self._items if i.kind == REASONING), None)
            if found is None:
                first = next(i for i, it in enumerate(self._items) if it.kind == TEXT)
                found = _Item(REASONING, provider=True, started_at=self._clock())
                found.ended_at = found.started_at
                self._items.insert(first, found)
            found.parts.append(text)
            return None, text
        if not self._answered and not self.structured:
            self.structured = True
            self._waiting = ""
        if last is None or last.kind != REASONING or self._fresh or last.provider != provider:
            if last is not None and last.kind == TEXT and not last.text.strip():
                self._items.pop()
            last = self._open(REASONING, provider)
        last.parts.append(text)
        return self._live(last), text

    # -- the finished reply ------------------------------------------------------------
    def items(self, status: str = "completed") -> list[dict[str, Any]]:
        """The `output` items, empty ones left out, the last answer stripped."""
        now = self._clock()
        kept = [item for item in self._items if item.text.strip()]
        shaped: list[dict[str, Any]] = []
        last_text = max((i for i, item in enumerate(kept) if item.kind == TEXT), default=-1)
        for index, item in enumerate(kept):
            if item.kind == TEXT and index == last_text:
                item = _Item(TEXT, [item.text.strip()])
            shaped.append(self._shaped(item, index, status, now))
        return shaped

    def _shaped(
        self, item: _Item, index: int, status: str, now: float | None = None
    ) -> dict[str, Any]:
        if item.kind == TEXT:
            return {
                "type": "message",
                "id": output_item_id(TEXT, self._message_id, index),
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": item.text}],
            }
        ended = item.ended_at if item.ended_at is not None else (now or self._clock())
        return {
            "type": "reasoning",
            "id": output_item_id(REASONING, self._message_id, index),
            "status": status,
            "start_tag": "<think>",
            "end_tag": "</think>",
            "attributes": {"type": "reasoning_content"} if item.provider else {},
            "content": [{"type": "output_text", "text": item.text.strip()}],
            "summary": None,
            "started_at": item.started_at,
            "ended_at": ended,
            "duration": int(ended - item.started_at),
        }

    def content(self) -> str:
        """The answer as Open WebUI keeps it in `content` (its `get_output_text`)."""
        texts = [
            part["text"]
            for item in self.items()
            if item["type"] == "message"
            for part in item["content"]
        ]
        return "\n".join(text for text in texts if text.strip())


def answer_text(text: str) -> str:
    """A reply with no reasoning, as Open WebUI keeps it: stripped."""
    return text.strip()
