"""How a reply's end is accounted for: counted in the metrics, written to the
access log (ids and sizes, never its text), and its trace closed.  Every end
comes here: a running reply's (`runner.py`: `counted_end`, `traced`), a pure-API
stream's (`counted`, which nothing stores), and one that never ran (`never_ran`,
`refused`: its model server would not open, or its caller left first).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable

from gateway.chat.lifecycle import Phase, ReplyRun
from gateway.chat.running import Running
from gateway.edge import access, metrics
from gateway.errors import SERVER_STOPPING, GatewayError, Unavailable
from gateway.events import Event, ReplyFailed, ReplyFinished

ENDINGS = (ReplyFinished, ReplyFailed)


async def counted(
    events: AsyncGenerator[Event, None],
    user_id: str,
    message_id: str,
    done: Callable[[], None] = lambda: None,
) -> AsyncGenerator[Event, None]:
    """A reply nothing stores (OpenAI's pure API: its caller consumes the events),
    counted as the runner counts its replies.  Closed before its end (the client
    left): cancelled."""
    run = ReplyRun(Running("", "", message_id, user_id, []))
    status, code = Phase.CANCELLED, None
    metrics.REPLIES_RUNNING.inc()
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, ENDINGS):
                    status = run.end_phase(event)
                    code = event.code if isinstance(event, ReplyFailed) else None
                else:
                    run.saw(event)
                yield event
    except Exception as exc:
        status, code = Phase.FAILED, getattr(exc, "code", "internal_error")
        raise
    except asyncio.CancelledError as exc:
        if SERVER_STOPPING in exc.args:  # a stopping replica's: its client told so
            status, code = Phase.FAILED, Unavailable.code
        raise
    finally:
        metrics.REPLIES_RUNNING.dec()
        done()
        _ended(run, status, code)


def refused(user_id: str, chat_id: str | None, message_id: str, error: GatewayError) -> None:
    """A reply the model server would not open, before it ran: counted and logged as
    failed (no model: it never answered)."""
    never_ran(Phase.FAILED, user_id, chat_id, message_id, error.code)


def never_ran(
    status: Phase, user_id: str, chat_id: str | None, message_id: str, code: str | None
) -> None:
    """A reply that ended before it ran."""
    _account(status, code, user_id, chat_id, message_id, model="", ttft_s=None, took_s=0.0, chars=0)


def counted_end(run: ReplyRun, end: ReplyFinished | ReplyFailed) -> None:
    """A run reply's end, in the phase it ended in."""
    _ended(run, run.phase, end.code if isinstance(end, ReplyFailed) else None)


def traced(run: ReplyRun, end: ReplyFinished | ReplyFailed) -> None:
    """The trace's last records: the finish step, then complete or error."""
    trace = run.trace
    if trace is None:
        return
    took = round((time.monotonic() - run.started) * 1000, 1)
    trace.step("finish", status=run.phase.value)
    if isinstance(end, ReplyFailed):
        trace.add("execution_error", error=end.message, code=end.code, duration_ms=took)
    else:
        usage = None if end.cancelled else end.usage.as_dict()
        result = {"status": run.phase.value, "chars": len(end.content), "duration_ms": took}
        trace.add("execution_complete", result={**result, "usage": usage})
    trace.end()


def _ended(run: ReplyRun, status: Phase, code: str | None) -> None:
    took = time.monotonic() - run.started
    ttft = None if run.first_token is None else run.first_token - run.started
    running = run.running
    _account(
        status,
        code,
        running.user_id,
        running.chat_id,
        running.message_id,
        model=run.model,
        ttft_s=ttft,
        took_s=took,
        chars=sum(map(len, run.parts)),
    )


def _account(
    status: Phase,
    code: str | None,
    user_id: str,
    chat_id: str | None,
    message_id: str,
    *,
    model: str,
    ttft_s: float | None,
    took_s: float,
    chars: int,
) -> None:
    """One end into the metrics and the access log."""
    metrics.reply_ended(status.value, code, model, ttft_s, took_s)
    access.reply_ended(
        status.value,
        user_id=user_id,
        chat_id=chat_id,
        message_id=message_id,
        model=model,
        took_s=took_s,
        chars=chars,
        code=code,
    )
