"""`gateway serve`: check, open, listen, then say so — in that order, so a start
that cannot succeed is one line and exit 2 before anything listens.

    settings read ─▶ preflight (data dir, files) ─▶ app resources opened
    (store, bus) ─▶ listen on host:port ─▶ "gateway listening on …"
    ─▶ SIGINT/SIGTERM ─▶ not ready; running replies finish (GATEWAY_SHUTDOWN_GRACE_S;
    a second signal cuts it short) ─▶ connections and resources closed
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

from aiohttp import web, web_response

from gateway import preflight
from gateway.app import build_app, drain
from gateway.edge.access import AccessLogger
from gateway.edge.connections import (
    SERVER_HEADER,
    AcceptErrorLog,
    ConnectionGuard,
    GuardedSite,
    effective_max_connections,
)
from gateway.edge.proxy import ProxyPolicy
from gateway.settings import Loaded
from gateway.store import StoreUnavailable

log = logging.getLogger("gateway")

# Passes of the collector's middle generation between two looks at a full pass
# (CPython's default is 10; see `_serve`).
FULL_COLLECTION_EVERY = 100

# Seconds what is still in flight once the replies are done (`app.drain`) gets
# to finish: plain requests end well within it; event streams, which never end
# by themselves, are cut then (their clients reconnect elsewhere).
SHUTDOWN_TIMEOUT_S = 5.0


def serve(loaded: Loaded) -> int:
    """Run until SIGINT or SIGTERM; `SettingsError` for a start that cannot succeed."""
    factory = preflight.loop_factory(loaded)
    # Ctrl-C before the signal handlers are in place: stop quietly all the same.
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(loaded))
    return 0


async def _serve(loaded: Loaded) -> None:
    settings = loaded.settings
    for warning in loaded.warnings:
        log.warning(warning)
    preflight.prepare(loaded)
    # aiohttp's own answers to requests it cannot parse come before any hook of
    # the app and would name its version (the app's hook covers the rest).
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]
    max_connections = effective_max_connections(settings.max_connections)
    asyncio.get_running_loop().set_exception_handler(AcceptErrorLog(max_connections))
    runner = await _opened(loaded)
    await _listening(loaded, runner, max_connections)
    # What start-up made (modules, the app, its resources) lives as long as the
    # process: kept out of the collector's full passes, which otherwise walk it
    # all and stall the loop tens of milliseconds each (bench/RESULTS.md).
    gc.collect()
    gc.freeze()
    # A full pass considered every FULL_COLLECTION_EVERY passes of the middle
    # generation, not every 10: each one stalls every reply at once (about 50 ms
    # under 250 streams), and at the default pace one came every few seconds.
    # Cycles that lived through two passes wait longer to be freed; memory
    # measured the same (bench/RESULTS.md).  CPython 3.11–3.13's collector (the
    # image's is 3.11); 3.14's incremental one has no such pass.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    log.info(
        "gateway listening on http://%s:%d%s (data dir %s, event loop %s)",
        settings.host if ":" not in settings.host else f"[{settings.host}]",
        _bound_port(runner, settings.port),
        settings.base_path + "/",
        settings.data_dir.resolve(),
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("gateway stopping")
        draining = asyncio.ensure_future(drain(runner.app, settings.shutdown_grace_s))
        # A second signal stops at once (the replies left are stored as they are).
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, draining.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await draining
    finally:
        await runner.cleanup()


async def _opened(loaded: Loaded) -> web.AppRunner:
    """The app with its resources open (the store, the bus...), not yet listening."""
    settings = loaded.settings
    runner = web.AppRunner(
        build_app(settings),
        # A client that disconnects cancels its handler, so the upstream
        # request behind it is closed at once, not at the next write.
        handler_cancellation=True,
        # One line per request (`edge/access.py`), and the HTTP request counter.
        access_log_class=AccessLogger,
        access_log=logging.getLogger("gateway.access"),
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        # Also how long a new connection may take to send its request line and
        # headers: the timer runs from its start until a whole request is in.
        keepalive_timeout=settings.keepalive_timeout_s,
        # Bodies as sent: a compressed one is refused 415, never inflated
        # (`api/common.py` `plain_bodies`).
        auto_decompress=False,
    )
    try:
        await runner.setup()
    except StoreUnavailable as exc:
        await runner.cleanup()
        field = "database_url" if settings.database_url else "data_dir"
        raise loaded.error(field, f"cannot open the database: {exc}") from None
    return runner


async def _listening(loaded: Loaded, runner: web.AppRunner, max_connections: int) -> None:
    settings = loaded.settings
    try:
        guard = ConnectionGuard(
            max_connections,
            settings.max_connections_per_address,
            # A proxy carries many clients: it limits each of them itself.
            exempt=ProxyPolicy(settings.trusted_proxies).trusts,
        )
        await GuardedSite(runner, settings.host, settings.port, guard).start()
    except OSError as exc:
        await runner.cleanup()
        raise preflight.bind_error(loaded, exc) from None


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    """The port actually listened on (`--port 0` picks a free one)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
