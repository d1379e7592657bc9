"""Server-Sent Events framing, both ways (WHATWG HTML §9.2), without I/O.

Writing::

    data: {"id": ...}\\n\\n        one event, one data line (payloads are one-line JSON)
    : keepalive\\n\\n             a comment; proxies see traffic, clients ignore it

Reading (the upstream's stream): bytes arrive in arbitrary pieces; `SSEParser`
buffers up to one event, splits on blank lines, joins multi-line `data:`
fields with "\\n", ignores comments and other fields, but for a failure told
outside `data:` (llama.cpp's server sends `error: {"code": 500, "message": …}`,
others `event: error`): its payload comes out as `{"error": …}`, which the
chunk decoder reads as the failure it is (not skipped, so a cut reply
followed by `[DONE]` does not pass for a whole one).  Events are bounded:
one larger than `max_event_bytes` raises `ValueError`, whether it is still
being buffered or arrived whole in one piece.

Lines end with CRLF, LF or CR, and with nothing else: U+2028, U+2029, U+0085
(and the other breaks `str.splitlines` knows) are text, which an upstream may
send raw inside its JSON strings.  Line ends are made LF as the bytes come in
(a CR that ends one piece may be the first half of a CRLF), so a blank line
is always `\\n\\n`, whatever mix of endings the server uses.

Model servers flush one whole event per token (`data: {…}\\n\\n`), so a read
usually brings one event, whole: `SSEParser.single` takes such a piece, with
nothing buffered before it, in one step, and says "not that" for anything
else (several events, a part of one, CR line ends), which then goes through
the general path.  Both give the same payloads, however the bytes are cut
(`tests/flavours/test_sse_parser.py`).
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway import jsonwire

KEEPALIVE = b": keepalive\n\n"


def data_frame(payload: str, space: bool = True) -> bytes:
    """One event. RAGFlow writes `data:` with no space, OpenAI with one."""
    return (b"data: " if space else b"data:") + payload.encode() + b"\n\n"


def event_frame(payload: str, event_id: str | None = None) -> bytes:
    """One event with an optional `id:` (a client's `Last-Event-ID` on reconnect);
    the id must not hold CR, LF or NUL."""
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"data: " + payload.encode() + b"\n\n"


class SSEParser:
    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        # Grown in place, and searched only past what was searched before: an event
        # that came in many small reads cost a copy and a search of the whole buffer
        # at each (a probe's 1 MB event in 64-byte writes: 8 s of CPU).
        self._buffer = bytearray()
        self._searched = 0  # no blank line before this offset
        self._max = max_event_bytes
        # The last byte taken was a CR: an LF first in the next piece is its CRLF's.
        self._after_cr = False

    def single(self, chunk: bytes) -> str | None:
        """The payload of `chunk` if it is exactly one event of one `data: ` line with
        nothing buffered before it (then it is taken); None, and nothing taken, for
        anything else: pass it to `events`."""
        if (
            chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and not self._buffer
            and not self._after_cr
            and b"\r" not in chunk
            and len(chunk) - 2 <= self._max
        ):
            return chunk[6:-2].decode("utf-8", errors="replace")
        return None

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data payloads of every event now complete."""
        return list(self.events(chunk))

    def events(self, chunk: bytes) -> Iterator[str]:
        """Add bytes (at once); iterate the payloads of the events now complete.

        Lazily: the events before an oversized one come out before its
        ValueError, however the bytes were cut.  Events not iterated stay
        buffered for the next call.
        """
        self._buffer += self._lf_ended(chunk)
        return self._complete()

    def close(self) -> list[str]:
        """End of stream: a last event without its blank line still counts."""
        # Emptied in place: an events() iterator still held sees the same buffer.
        rest, self._searched = bytes(self._buffer), 0
        self._buffer.clear()
        data = _event_data(rest) if rest.strip() else None
        return [] if data is None else [data]

    def _lf_ended(self, chunk: bytes) -> bytes:
        if not chunk or (not self._after_cr and b"\r" not in chunk):
            return chunk  # the common case: LF only, one search
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
            if not chunk:
                self._after_cr = False
                return chunk
        self._after_cr = chunk.endswith(b"\r")
        # CR and LF never occur inside a UTF-8 sequence: bytes are safe to edit.
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _complete(self) -> Iterator[str]:
        buffer = self._buffer
        while (end := buffer.find(b"\n\n", self._searched)) >= 0:
            if end > self._max:
                raise ValueError(f"SSE event larger than {self._max} bytes")
            raw = bytes(buffer[:end])
            del buffer[: end + 2]
            self._searched = 0
            data = _event_data(raw)
            if data is not None:
                yield data
        # (a blank line may begin with the last byte searched)
        self._searched = max(0, len(buffer) - 1)
        # Not yet whole: past the bound already, unless the byte past it is the
        # first half of its blank line.
        if len(self._buffer) - self._buffer.endswith(b"\n") > self._max:
            raise ValueError(f"SSE event larger than {self._max} bytes")


def _event_data(raw: bytes) -> str | None:
    lines: list[str] = []
    # Line ends are LF only by now (see `_lf_ended`); never `str.splitlines`.
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        if line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
        elif line.startswith(("error:", "event:")):
            return _told(raw)  # (no model server's event but a failure's)
    return "\n".join(lines) if lines else None


def _told(raw: bytes) -> str | None:
    """An event with an `error:` or `event:` field: a failure's, read as one."""
    fields: dict[str, list[str]] = {"data": [], "error": [], "event": []}
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        name, colon, value = line.partition(":")
        if colon and name in fields:
            fields[name].append(value[1:] if value.startswith(" ") else value)
    data, error = "\n".join(fields["data"]), "\n".join(fields["error"])
    if fields["error"] or (fields["event"][-1:] == ["error"] and fields["data"]):
        return _failure(error or data)
    return data if fields["data"] else None


def _failure(told: str) -> str:
    """`{"error": …}`: what the server told, as it wrote it when it is a JSON object
    (its message for the log), else as a string."""
    told = told.strip()
    if told.startswith("{") and told.endswith("}"):
        return '{"error":' + told + "}"
    return '{"error":' + jsonwire.string(told) + "}"
