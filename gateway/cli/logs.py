"""Log lines as operators read them: one line each, `extra=` fields appended as
key=value, and secrets masked in the whole line (message, extras and traceback)."""

from __future__ import annotations

import json
import logging

from gateway.edge import redact
from gateway.settings import Loaded

_STANDARD_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class ExtraFormatter(logging.Formatter):
    """Plain log lines with the record's `extra=` fields appended as key=value,
    secrets masked in the whole line (message, extras and traceback)."""

    def __init__(self, fmt: str, redactor: redact.Redactor) -> None:
        super().__init__(fmt)
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_FIELDS}
        if extras:
            line += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extras.items())
        return self._redact(line)


def setup(loaded: Loaded) -> None:
    settings = loaded.settings
    redactor = redact.Redactor(
        [settings.secret_key or "", *settings.openai_api_keys, *settings.api_keys]
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        ExtraFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redactor)
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
