"""Every Prometheus metric the gateway exports, declared in this one place.

`GET /metrics` (`api/health.py`) renders `REGISTRY` in Prometheus's text
format.  Each replica counts what happened in its own process; Prometheus
scrapes every replica and sums.  The names, by what an operator asks::

    who is connected     gateway_connections{transport, flavour}           gauge
                         gateway_connections_opened_total{transport, flavour}
                         gateway_rooms                                     gauge
    what replies do      gateway_replies_running                           gauge
                         gateway_replies_total{status}   finished | failed | cancelled
                         gateway_reply_failures_total{code}   the error code clients saw
                         gateway_time_to_first_token_seconds{model}        histogram
                         gateway_reply_duration_seconds{model}             histogram
    how delivery goes    gateway_events_delivered_total{transport}   events written to clients
                         gateway_outbox_merges_total      deltas merged for a slow client
                         gateway_paced_replies_total   replies a client fell behind on,
                                                       then fed from the replay buffer
                         gateway_slow_client_disconnects_total
    who was refused      gateway_auth_failures_total{reason}
    the model servers    gateway_upstream_errors_total{kind}
    the bus (Redis)      gateway_bus_published_total, gateway_bus_received_total,
                         gateway_bus_malformed_total, gateway_bus_send_lag_seconds,
                         gateway_bus_dropped_total, gateway_bus_waits_total
    the store            gateway_store_seconds{op}                          histogram
    HTTP                 gateway_http_requests_total{status}

Every label takes values from a fixed set (a transport, a flavour, an error
code, a store method, a model the model servers listed): nothing a client
sends can grow the number of series.

The counters on the path of every event (`HOT`) are plain integers read at
scrape time, not prometheus-client counters: a lock per delta would cost more
than the rest of its delivery.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = ["REGISTRY", "render"]

# No `_created` series beside each counter: Prometheus does not need them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()

# Seconds: a first token within 50 ms is the gateway's own target; minutes-long
# replies are a model's.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, float("inf"))
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, float("inf"))

CONNECTIONS = Gauge(
    "gateway_connections",
    "Open client connections, by transport and flavour",
    ["transport", "flavour"],
    registry=REGISTRY,
)
CONNECTIONS_OPENED = Counter(
    "gateway_connections_opened",
    "Client connections accepted, by transport and flavour",
    ["transport", "flavour"],
    registry=REGISTRY,
)
REPLIES_RUNNING = Gauge(
    "gateway_replies_running", "Replies streaming in this replica", registry=REGISTRY
)
REPLIES = Counter(
    "gateway_replies", "Replies ended, by how they ended", ["status"], registry=REGISTRY
)
REPLY_FAILURES = Counter(
    "gateway_reply_failures",
    "Failed replies, by the error code their clients were given",
    ["code"],
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gateway_time_to_first_token_seconds",
    "From a reply's start to its first text or reasoning, by model",
    ["model"],
    buckets=_TTFT_BUCKETS,
    registry=REGISTRY,
)
REPLY_DURATION = Histogram(
    "gateway_reply_duration_seconds",
    "From a reply's start to its end, by model",
    ["model"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "gateway_auth_failures",
    "Tokens and API keys refused, by reason",
    ["reason"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors",
    "Model server failures, by kind",
    ["kind"],
    registry=REGISTRY,
)
BUS_SEND_LAG = Histogram(
    "gateway_bus_send_lag_seconds",
    "From an event's publish to its write to Redis",
    buckets=_LAG_BUCKETS,
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "gateway_store_seconds",
    "Store calls, by method",
    ["op"],
    buckets=_STORE_BUCKETS,
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "gateway_http_requests",
    "HTTP requests answered, by status code",
    ["status"],
    registry=REGISTRY,
)

# The reasons of `gateway_auth_failures_total` (a fixed set).
AUTH_REASONS = (
    "missing",
    "malformed",
    "invalid_api_key",
    "revoked",
    "not_jwt",
    "algorithm",
    "expired",
    "signature",
    "no_subject",
    "removed",
    "pending",
)


class Hot:
    """Counters bumped once per event: plain integers, collected at scrape time."""

    __slots__ = (
        "bus_dropped",
        "bus_malformed",
        "bus_published",
        "bus_received",
        "bus_waits",
        "delivered_socketio",
        "delivered_sse",
        "delivered_websocket",
        "merges",
        "paced",
        "slow_disconnects",
    )

    def __init__(self) -> None:
        # Events written to clients (a Socket.IO packet, WebSocket or SSE frames).
        self.delivered_socketio = 0
        self.delivered_websocket = 0
        self.delivered_sse = 0
        self.merges = 0
        self.paced = 0
        self.slow_disconnects = 0
        self.bus_published = 0
        self.bus_received = 0
        self.bus_malformed = 0
        self.bus_dropped = 0
        self.bus_waits = 0


HOT = Hot()

_HOT_HELP = {
    "merges": ("gateway_outbox_merges", "Text deltas merged into the one before for a slow client"),
    "paced": (
        "gateway_paced_replies",
        "Replies a client fell behind on, then fed to it from the replay buffer as it read",
    ),
    "slow_disconnects": (
        "gateway_slow_client_disconnects",
        "Connections dropped because their client fell too far behind",
    ),
    "bus_published": ("gateway_bus_published", "Events published to the other replicas"),
    "bus_received": ("gateway_bus_received", "Events received from the other replicas"),
    "bus_malformed": ("gateway_bus_malformed", "Bus messages skipped as malformed"),
    "bus_dropped": (
        "gateway_bus_dropped",
        "Events dropped between replicas: the queue to Redis was full (an outage), or "
        "too many waited here behind a store read",
    ),
    "bus_waits": (
        "gateway_bus_waits",
        "Times a reply waited for the events queued for the other replicas to go",
    ),
}


class _Rooms:
    """Where `gateway_rooms` is read from: the fan-out of this process, once it runs."""

    count: Callable[[], int] | None = None


ROOMS = _Rooms()


class _HotCollector(Collector):
    def collect(self) -> Iterator[Any]:
        delivered = CounterMetricFamily(
            "gateway_events_delivered",
            "Reply and room events written to clients, by transport",
            labels=["transport"],
        )
        for transport in ("socketio", "websocket", "sse"):
            delivered.add_metric([transport], getattr(HOT, f"delivered_{transport}"))
        yield delivered
        for field, (name, text) in _HOT_HELP.items():
            yield CounterMetricFamily(name, text, value=getattr(HOT, field))
        count = ROOMS.count
        yield GaugeMetricFamily(
            "gateway_rooms",
            "Rooms with a connection in this replica",
            value=count() if count else 0,
        )


REGISTRY.register(_HotCollector())


def render(accept: str = "") -> tuple[bytes, str]:
    """(the registry, its content type) in the format the scraper asks for: Prometheus's
    text format 0.0.4 unless its Accept header names OpenMetrics."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type


# -- helpers for the places that count --------------------------------------------------------
def connection(transport: str, flavour: str) -> Gauge:
    """A connection opened: counted now; `.dec()` what is returned when it closes."""
    CONNECTIONS_OPENED.labels(transport, flavour).inc()
    gauge = CONNECTIONS.labels(transport, flavour)
    gauge.inc()
    return gauge


def reply_ended(
    status: str, code: str | None, model: str, ttft_s: float | None, took_s: float
) -> None:
    REPLIES.labels(status).inc()
    if code is not None:
        REPLY_FAILURES.labels(code).inc()
    if model:
        if ttft_s is not None:
            TIME_TO_FIRST_TOKEN.labels(model).observe(ttft_s)
        REPLY_DURATION.labels(model).observe(took_s)


C = TypeVar("C", bound=type)


def timed_methods(cls: C) -> C:
    """Every public coroutine method of `cls` (its own and inherited) timed into
    `gateway_store_seconds{op}`, by the method's name."""
    seen: set[str] = set()
    for base in cls.__mro__:
        for name, member in vars(base).items():
            if name in seen or name.startswith("_"):
                continue
            seen.add(name)
            if inspect.iscoroutinefunction(member):
                setattr(cls, name, _timed(member, name))
    return cls


def _timed(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            # The series appears with the method's first call.
            STORE_SECONDS.labels(name).observe(time.perf_counter() - started)

    return timed
