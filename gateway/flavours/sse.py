"""Server-Sent Events framing, both ways (WHATWG HTML §9.2), without I/O.

Writing::

    data: {"id": ...}\\n\\n        one event, one data line (payloads are one-line JSON)
    : keepalive\\n\\n             a comment; proxies see traffic, clients ignore it

Reading (the upstream's stream): bytes arrive in arbitrary pieces; `SSEParser`
buffers up to one event, splits on blank lines, joins multi-line `data:`
fields with "\\n", ignores comments and other fields.  The buffer is bounded:
an event larger than `max_event_bytes` raises `ValueError`.
"""

from __future__ import annotations

KEEPALIVE = b": keepalive\n\n"


def data_frame(payload: str, space: bool = True) -> bytes:
    """One event. RAGFlow writes `data:` with no space, OpenAI with one."""
    return (b"data: " if space else b"data:") + payload.encode() + b"\n\n"


class SSEParser:
    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._buffer = b""
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data payloads of every event now complete."""
        self._buffer += chunk
        payloads: list[str] = []
        while True:
            end, sep_len = _event_end(self._buffer)
            if end < 0:
                break
            raw, self._buffer = self._buffer[:end], self._buffer[end + sep_len :]
            data = _event_data(raw)
            if data is not None:
                payloads.append(data)
        if len(self._buffer) > self._max:
            raise ValueError(f"SSE event larger than {self._max} bytes")
        return payloads

    def close(self) -> list[str]:
        """End of stream: a last event without its blank line still counts."""
        rest, self._buffer = self._buffer, b""
        data = _event_data(rest) if rest.strip() else None
        return [] if data is None else [data]


def _event_end(buffer: bytes) -> tuple[int, int]:
    # Events end with a blank line; servers use \n\n, \r\n\r\n or (rarely) \r\r.
    if b"\r" not in buffer:  # the common case, one search
        return buffer.find(b"\n\n"), 2
    best, best_len = -1, 0
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        index = buffer.find(separator)
        if index >= 0 and (best < 0 or index < best):
            best, best_len = index, len(separator)
    return best, best_len


def _event_data(raw: bytes) -> str | None:
    lines: list[str] = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
    return "\n".join(lines) if lines else None
