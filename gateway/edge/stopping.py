"""A stopping replica's cancellation of a pure-API reply's request, told apart.

Past `GATEWAY_SHUTDOWN_GRACE_S` the replica cancels each pure-API reply's request
task with `SERVER_STOPPING` (`ChatService.stop_pure_replies`); where it lands (the
model server not answered yet, the stream, the JSON answer) the client is told in
its own protocol instead of being cut.
"""

from __future__ import annotations

import asyncio

from gateway.errors import SERVER_STOPPING


def stopped(exc: BaseException) -> bool:
    """Whether `exc` is the stopping replica's cancellation of the current task, and
    nothing else cancelled it: then it is taken as handled (the task's cancellation
    count back to zero, as `asyncio.timeout` expects) and the caller answers in its
    protocol; else the caller lets it go on."""
    if not isinstance(exc, asyncio.CancelledError) or SERVER_STOPPING not in exc.args:
        return False
    task = asyncio.current_task()
    return task is not None and task.uncancel() == 0
