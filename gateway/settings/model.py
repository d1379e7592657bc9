"""The settings model: every field with its unit, default and what it accepts.

One flat class, a field per setting: it is the table the README, the example
config and the error lines are made from (`describe.py`, `sources.py`).  Each
field's `description` is what the error line says it accepts; its type says
which forms an operator may write and what the value must be
(`forms.py`: `"a;b"` or a YAML list for a list, an empty string for none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway.settings import forms


def _list(description: str) -> Any:
    return Field(default_factory=list, description=description)


# The longest any time setting may be: a year.  Longer is no one's intent, and
# past what a timer or Redis's expiry takes (`inf`, `1e300`) it crashed the start
# or every expiry sent to Redis.
MAX_SECONDS = 365 * 24 * 3600
# The shortest interval of the settings that set a timer running all the time
# (checks, keepalives, checkpoints): 1e-6 kept an idle gateway's core busy.
MIN_TICK_S = 0.1


class Settings(BaseModel):
    # No inf or nan in any number: a time, a rate or a bound that is not finite is
    # a typing slip, and crashed what took it.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes true as 1 for a number; YAML reads yes, no, on and off as
        # true and false, so `port: yes` would listen on port 1.
        field = cls.model_fields[info.field_name or ""]
        if isinstance(value, bool) and field.annotation is not bool:
            raise ValueError(f"{str(value).lower()} (YAML reads yes/no/on/off so) is not a value")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _at_most_a_year(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name in _TIMERS and isinstance(value, int | float) and value > MAX_SECONDS:
            raise ValueError(f"at most {MAX_SECONDS} seconds (a year)")
        return value

    host: forms.Host = Field(
        "127.0.0.1", description="an interface address or host name, e.g. 0.0.0.0"
    )
    port: int = Field(8080, ge=0, le=65535, description="a TCP port, 0-65535")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="auto (uvloop where it is installed, as it is by default on Linux and "
        "macOS: about 12 % less CPU per streamed chunk), uvloop, or asyncio (the standard "
        "library's)",
    )
    data_dir: forms.DataDir = Field(Path("data"), description="a directory path")
    secret_key: forms.OrNone[forms.Text] = Field(
        None, description="any non-empty string; generated and kept in DATA_DIR when unset"
    )
    jwt_public_key_file: forms.OrNone[forms.FilePath] = Field(
        None, description="a PEM file with an RS256/ES256 public key"
    )
    jwt_expires_in_s: forms.OrNone[int] = Field(
        7 * 24 * 3600, ge=1, description="seconds a sign-in token lives; empty for no expiry"
    )
    openai_api_base_urls: forms.BaseUrls = _list(
        "';'-separated http(s) base URLs, usually ending in /v1"
    )
    openai_api_keys: forms.Keys = _list(
        "';'-separated keys, one per base URL in the same order (empty for none: ';sk-b' is "
        "no key for the first URL, sk-b for the second)"
    )
    demo_model: bool = Field(True, description="true or false")
    default_model: str = Field(
        "",
        description="the model a client that names none gets (Nadoo, RAGFlow); "
        "empty for the first model the upstreams list",
    )
    demo_token_delay_s: float = Field(0.02, ge=0, description="seconds between demo tokens")
    task_model: str = Field(
        "",
        description="the model that writes titles, tags and follow-up questions the web app "
        "asks for; empty for the model of the reply",
    )
    trusted_proxies: forms.Proxies = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="';'-separated addresses or CIDRs whose X-Forwarded-*/Forwarded headers "
        "are believed",
    )
    base_path: forms.BasePath = Field(
        "", description="a path the whole gateway lives under, e.g. /chat (empty: the root)"
    )
    cors_allow_origin: forms.Origins = Field(
        default_factory=lambda: ["*"],
        description="';'-separated origins like https://chat.example.com, or *",
    )
    database_url: forms.DatabaseUrl = Field(
        "", description="empty (SQLite in DATA_DIR), sqlite:///<path> or postgresql://…"
    )
    # Under load each store call holds a connection for several trips through a
    # busy event loop, so the pool runs out long before the server does
    # (bench/RESULTS.md: 600 streams on two replicas lost 16 to 47 turns with 10
    # connections each, 4 with 20, none with 40); 20 keeps 4 replicas under
    # PostgreSQL's default of 100 connections.
    database_pool_size: int = Field(
        20,
        ge=1,
        le=1000,
        description="an integer 1–1000: PostgreSQL connections each replica may hold at once "
        "(keep replicas × this under the server's max_connections, 100 by default)",
    )
    websocket_manager: Literal["", "local", "redis"] = Field(
        "", description="empty, local or redis"
    )
    redis_url: forms.RedisUrl = Field(
        "redis://127.0.0.1:6379/0", description="a redis://, rediss:// or unix:// URL"
    )
    redis_key_prefix: str = Field(
        "gw:", description="prefix of every Redis key and channel (several deployments, one Redis)"
    )
    bus_max_message_bytes: int = Field(
        256 * 1024,
        ge=4096,
        description="bytes of one event between replicas; bigger deltas are split, ≥ 4096",
    )
    enable_websocket_support: bool = Field(True, description="true or false")
    api_keys: forms.Pairs = Field(
        default_factory=dict, description="';'-separated key=user_id pairs"
    )
    upstream_connect_timeout_s: float = Field(10.0, gt=0, description="seconds")
    upstream_read_timeout_s: forms.OrNone[float] = Field(
        300.0, gt=0, description="seconds of upstream silence before giving up; empty for none"
    )
    upstream_max_connections: int = Field(1000, ge=1, description="an integer ≥ 1")
    upstream_models_ttl_s: float = Field(60.0, ge=0, description="seconds to cache model lists")
    sse_keepalive_s: float = Field(
        15.0, ge=MIN_TICK_S, description="seconds between SSE comment lines"
    )
    enable_signup: bool = Field(
        True,
        description=(
            "true or false (false: only the first user of an empty store, who is admin; "
            "a token's user counts)"
        ),
    )
    password_min_chars: int = Field(
        8,
        ge=1,
        description="characters a new password needs at least (sign-up, /api/v1/auths/add, "
        "gateway users add), ≥ 1",
    )
    signin_max_failures_per_account: int = Field(
        5,
        ge=1,
        description="failed sign-ins for one e-mail within GATEWAY_SIGNIN_FAILURE_WINDOW_S "
        "before it is locked (each lock twice the last, up to GATEWAY_SIGNIN_MAX_LOCKOUT_S), ≥ 1",
    )
    signin_max_failures_per_address: int = Field(
        20,
        ge=1,
        description="failed sign-ins from one client address (IPv6: its /64) within "
        "GATEWAY_SIGNIN_FAILURE_WINDOW_S before it is locked likewise, ≥ 1",
    )
    signin_failure_window_s: float = Field(
        60.0, gt=0, description="seconds failed sign-ins are counted over; the first lock's length"
    )
    signin_max_lockout_s: float = Field(
        900.0, gt=0, description="seconds the longest sign-in lock lasts"
    )
    password_hash_threads: forms.OrNone[int] = Field(
        None,
        ge=1,
        le=8,
        description="threads that hash passwords (scrypt: ~35 ms of CPU, 16 MiB each); "
        "empty for half the CPUs, 1 to 8",
    )
    password_hash_max_waiting: int = Field(
        64,
        ge=0,
        description="password hashes waiting for a thread before more are answered 503 at once "
        "(64 wait about 2 s on one thread)",
    )
    checkpoint_interval_s: float = Field(
        1.0, ge=MIN_TICK_S, description="seconds between draft checkpoints of a streaming reply"
    )
    access_recheck_s: float = Field(
        2.0,
        ge=MIN_TICK_S,
        description="seconds between checks for removed users and revoked keys, whose open "
        "connections are then closed; also how long a signed-in user's details are reused",
    )
    ragflow_sse_answer_mode: Literal["cumulative", "delta"] = Field(
        "cumulative",
        description="RAGFlow HTTP answers: cumulative (RAGFlow ≤ 0.23, the SDK's examples) "
        "or delta (≥ 0.24)",
    )
    ragflow_ws_answer_mode: Literal["cumulative", "delta"] = Field(
        "delta",
        description="RAGFlow WebSocket answers: delta (what its WebSocket clients append) "
        "or cumulative",
    )
    outbox_max_events: int = Field(
        256, ge=8, description="events queued per connection before deltas are merged"
    )
    outbox_max_chars: forms.OrNone[int] = Field(
        1024 * 1024,
        ge=1024,
        description="characters of reply text queued per connection before it is dropped; "
        "empty for no limit",
    )
    stalled_client_s: float = Field(
        20.0,
        ge=MIN_TICK_S,
        description="seconds a connection may take nothing while a reply waits for room "
        "in its queue (on an SSE stream: while bytes wait for it) before it is dropped and "
        "its model server's request closed (one that reads slowly is fed at its pace)",
    )
    replay_events: int = Field(
        10000,
        ge=0,
        description="events of one reply kept for clients that resume (0: none kept; a "
        "resume then gets the stored snapshot)",
    )
    replay_ttl_s: float = Field(
        60.0,
        gt=0,
        description="seconds a finished reply's events stay resumable",
    )
    max_replies_per_user: forms.OrNone[int] = Field(
        32,
        ge=1,
        description="replies one user may have running at once on a replica (model "
        "streams); more get 429; empty for no limit",
    )
    max_followers_per_user: int = Field(
        16,
        ge=1,
        description="event streams (/api/v1/events and reply attachments) one user may "
        "have open on one replica; more get 429",
    )
    max_request_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="bytes, ≥ 1024")
    request_body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="seconds a client may take to send a request body once its headers are "
        "in; then 408 and the connection is closed",
    )
    keepalive_timeout_s: float = Field(
        75.0,
        gt=0,
        description="seconds a connection may stay open without a whole request: idle between "
        "requests, or still sending its request line and headers",
    )
    max_connections: int = Field(
        10000,
        ge=1,
        description="client connections open at once (HTTP, SSE, WebSocket); more get 503; "
        "kept below the open-files limit",
    )
    max_connections_per_address: forms.OrNone[int] = Field(
        64,
        ge=1,
        description="client connections open at once from one address (an IPv6 /64), "
        "GATEWAY_TRUSTED_PROXIES excepted; more get 429; empty for no limit",
    )
    max_messages_per_s: forms.OrNone[float] = Field(
        20,
        gt=0,
        description="messages a second one connection may send (WebSocket frames, "
        "pings and pongs among them, and Socket.IO events), in bursts of twice that; "
        "more are dropped with an error (a ping, unanswered), and a WebSocket sending "
        "over ten bursts past it within a second is cut off (raw: close 1008; "
        "Socket.IO's: its session ends); empty for no limit",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="seconds a stopping replica (SIGTERM) lets its running replies "
        "finish, not ready meanwhile; those still running then are stored as they are",
    )
    websocket_compression: bool = Field(
        False,
        description="true or false: permessage-deflate on WebSockets (raw and Socket.IO) "
        "when the client offers it (about 120 KB of memory per connection)",
    )
    max_frame_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="bytes of one WebSocket frame or Socket.IO packet from a client (a "
        "Socket.IO packet's text is read only up to 64 Ki characters, LIMITS.md), ≥ 1024",
    )
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], forms.Upper] = (
        Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    )
    log_format: Annotated[Literal["text", "json"], forms.Lower] = Field(
        "text", description="text (one line each) or json (one JSON object per line)"
    )
    access_log: bool = Field(
        True,
        description="true or false: one log line per HTTP request, connection and reply",
    )
    metrics: bool = Field(True, description="true or false: serve Prometheus metrics at /metrics")
    metrics_token: forms.OrNone[forms.Text] = Field(
        None,
        description="a bearer token /metrics requires (Authorization: Bearer <token>); "
        "empty for none",
    )


# The times a timer, a wait or Redis's expiry takes (every `…_s` setting but a rate,
# `max_messages_per_s`, and a token's lifetime, `jwt_expires_in_s`: only written
# into the token, as Open WebUI's `JWT_EXPIRES_IN` of years is).
_TIMERS = frozenset(
    name
    for name in Settings.model_fields
    if name.endswith("_s") and not name.endswith("_per_s") and name != "jwt_expires_in_s"
)
