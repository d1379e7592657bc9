"""`gateway doctor URL`: probe a deployment from outside, as its clients reach it.

Theory of operation: the checks run one after another, in the order of
`PLAN`, each under its own time budget; a check returns its OK detail, or
raises `Fault` (a FAIL line with its fixes) or `Skip` (a SKIP line).  What a
later check needs from an earlier one (the gateway answered, the token was
accepted, which WebSocket paths upgrade) is kept in `Findings`, so one proxy
fault is reported once, where it shows, and the checks that depend on it say
so instead of failing again.  Nothing raised by the network ever escapes as a
traceback: it becomes a FAIL line naming what to do.

    report = await run("https://chat.example.com/chat", token=T)
    report.faults                  # how many FAIL
    report.get("sse-chunking")     # Check(name, status, detail, fix)
    print(report.render())

The doctor is a client: it reads no settings of the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.doctor import chats, http, sockets
from gateway.doctor.fixes import network_fault
from gateway.doctor.report import Check, Fault, Report, Skip, fail, ok, render_check, skip
from gateway.doctor.target import Findings, Options, Target, UsageError

__all__ = ["NAME_WIDTH", "Check", "Report", "UsageError", "render_check", "run"]

Probe = Callable[[Target, Findings], Awaitable[str]]
Budget = Callable[[Options], float]


def _timeout(options: Options) -> float:
    return options.timeout


# name, probe, how long it may take
PLAN: list[tuple[str, Probe, Budget]] = [
    ("health", http.health, _timeout),
    ("token", http.token, _timeout),
    ("cors", http.cors, _timeout),
    ("websocket-upgrade", sockets.websocket_upgrade, _timeout),
    ("socketio-websocket", sockets.socketio_websocket, _timeout),
    # Every poll is a few requests; a slow link needs more than one timeout for all.
    ("socketio-polling", sockets.socketio_polling, lambda o: o.timeout + o.polls),
    ("sse-chunking", http.sse_chunking, _timeout),
    ("idle-stream", sockets.idle_stream, lambda o: o.idle_seconds + 2 * o.timeout),
    ("chat:openai", chats.chat_openai, _timeout),
    ("chat:openwebui", chats.chat_openwebui, _timeout),
    ("chat:nadoo", chats.chat_nadoo, _timeout),
    ("chat:ragflow", chats.chat_ragflow, _timeout),
]

NAME_WIDTH = max(len(name) for name, _, _ in PLAN)


async def run(
    url: str,
    token: str | None = None,
    origin: str | None = None,
    slow: bool = False,
    idle_seconds: float = 65.0,
    polls: int = 10,
    model: str | None = None,
    timeout: float = 20.0,  # noqa: ASYNC109 (each check's budget, not this call's)
    insecure: bool = False,
    on_check: Callable[[Check], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Report:
    """Every check against `url`; raises UsageError for a URL it cannot probe.

    `on_check` is called with each check as it ends (the CLI prints it then);
    `on_progress` with how a long one is going (the idle check, every 5 s).
    """
    options = Options(token, origin, slow, idle_seconds, polls, model, timeout, insecure)
    target = Target(url, options, on_progress)
    report = Report(target.base)
    found = Findings()
    try:
        for name, probe, budget in PLAN:
            if name != "health" and not found.reachable:
                check = skip(name, "health failed (see health)")
            else:
                check = await _check(name, probe, budget(options), target, found)
            report.checks.append(check)
            if on_check is not None:
                on_check(check)
    finally:
        await target.close()
    return report


async def _check(
    name: str, probe: Probe, budget_s: float, target: Target, found: Findings
) -> Check:
    try:
        async with asyncio.timeout(budget_s):
            return ok(name, await probe(target, found))
    except Skip as exc:
        return skip(name, exc.reason)
    except Fault as exc:
        return fail(name, exc.detail, exc.fix)
    except TimeoutError:
        return fail(
            name,
            f"no result within {budget_s:g} s",
            (
                "raise --timeout if the link or the model is slow; otherwise see the proxy's "
                "and the gateway's logs",
            ),
        )
    except Exception as exc:  # a surprise is a FAIL line too, never a traceback
        fault = network_fault(exc, target.options.timeout)
        return fail(name, fault.detail, fault.fix)
