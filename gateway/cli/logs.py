"""Log lines as operators read them, secrets masked in the whole line (message,
extras and traceback):

* `GATEWAY_LOG_FORMAT=text` (the default): one line each, `extra=` fields
  appended as key=value;
* `GATEWAY_LOG_FORMAT=json`: one JSON object per line — `ts`, `level`,
  `logger`, `msg`, the `extra=` fields, and `exc` for a traceback — for log
  shippers (Loki, Elasticsearch, CloudWatch).

Two libraries' expected trouble is said in one line (`OneLine`: asyncpg's pool
reconnecting; `BadRequests`: aiohttp refusing a request it cannot read).

Every line written while a request is handled (or a reply it started runs)
carries its `request_id` (`edge/access.py`).  `GATEWAY_ACCESS_LOG=false`
silences the `gateway.access` lines (requests, connections, replies).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.edge import access, redact
from gateway.settings import Loaded

_STANDARD_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_FIELDS}
    if "request_id" not in extras:
        request_id = access.current_id()
        if request_id is not None:
            extras["request_id"] = request_id
    return extras


class ExtraFormatter(logging.Formatter):
    """Plain log lines with the record's `extra=` fields appended as key=value,
    secrets masked in the whole line (message, extras and traceback)."""

    def __init__(self, fmt: str, redactor: redact.Redactor) -> None:
        super().__init__(fmt)
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extras.items())
        return self._redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, secrets masked in it."""

    def __init__(self, redactor: redact.Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # Masked before encoding (JSON's escapes could split a secret) and after
        # (a token inside a list or a dict field).
        masked = {k: self._redact(v) if isinstance(v, str) else v for k, v in line.items()}
        return self._redact(json.dumps(masked, default=str, ensure_ascii=False))


class OneLine(logging.Filter):
    """A library's expected trouble in one line: its traceback becomes `error=` (the
    exception's type and message).  For asyncpg's pool, which logs a traceback each
    time it fails to reconnect while the database is down."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.error = f"{type(exc).__name__}: {exc}"[:300]
            record.exc_info, record.exc_text = None, None
        return True


class BadRequests(logging.Filter):
    """aiohttp's "Error handling request" for a request that is not HTTP it can read
    (a request line or header past its 8 KB, bytes that are no request), and its
    "Unhandled exception" for a body that does not decode as its Content-Encoding
    says (met again when aiohttp drains the body after the route's 400): the
    client's fault, answered 400, and logged by aiohttp as an ERROR with a
    traceback, for each such request, quoting the request line (a token in its
    query among it).  Here: one INFO line at most every `every_s`, the last one's
    kind and how many there were."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self._every_s = every_s
        self._count = 0
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | RequestPayloadError):
            return True
        self._count += 1
        now = time.monotonic()
        if now < self._next or not logging.getLogger().isEnabledFor(logging.INFO):
            return False
        record.msg = "bad HTTP requests refused with 400: %d since the last line (the last: %s)"
        record.args = (self._count, type(exc).__name__)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        self._count, self._next = 0, now + self._every_s
        return True


def setup(loaded: Loaded) -> None:
    settings = loaded.settings
    redactor = redact.Redactor(
        [
            settings.secret_key or "",
            settings.metrics_token or "",
            *settings.openai_api_keys,
            *settings.api_keys,
            *redact.passwords(
                [settings.database_url, settings.redis_url, *settings.openai_api_base_urls]
            ),
        ]
    )
    handler = logging.StreamHandler()
    formatter: logging.Formatter
    if settings.log_format == "json":
        formatter = JsonFormatter(redactor)
    else:
        formatter = ExtraFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redactor)
    handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("asyncpg.pool").addFilter(OneLine())
    logging.getLogger("aiohttp.server").addFilter(BadRequests())
    if not settings.access_log:
        logging.getLogger("gateway.access").setLevel(logging.WARNING)
