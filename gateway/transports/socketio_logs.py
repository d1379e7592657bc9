"""python-socketio's and python-engineio's loggers, as the gateway runs them.

Loggers of their own, not `logger=False`: with False each library adds a
handler of its own that writes tracebacks to stderr past the gateway's format
and secret masking.  Below ERROR they say something per packet a client can
send at will (INFO, and WARNING for an event before its CONNECT): kept out, as
False did.  What they log as an ERROR that is the client's fault is said at
INFO (`_ClientsFault`).
"""

from __future__ import annotations

import logging


def library_logger(name: str) -> logging.Logger:
    """The library's logger `name`, at ERROR unless the operator set its level."""
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    if not any(isinstance(f, _ClientsFault) for f in logger.filters):
        logger.addFilter(_ClientsFault())
    return logger


class _ClientsFault(logging.Filter):
    """What the libraries log as an ERROR that is a client's fault, not the server's,
    said at INFO: Engine.IO logs the first of each kind of bad request in a process
    as an ERROR, the next at INFO ("unsupported version", a Socket.IO client of
    another major version; "Invalid transport", "Invalid session", "Invalid JSONP
    index number", a poll of a closed or upgraded session…).  Each is answered 400,
    and the access log has it.  An operator's alert on ERROR lines is for the
    gateway's own faults (Engine.IO's one of its own, no WebSocket support, stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and str(record.msg).endswith(_ONCE)
            and not str(record.msg).startswith("The WebSocket transport is not available")
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# What Engine.IO's `_log_error_once` adds to the first of each kind it logs.
_ONCE = "(further occurrences of this error will be logged with level INFO)"
