"""One error tree for every wire.

Each error knows how it looks on HTTP (`http_status`), on a raw WebSocket
(`ws_close_code`) and in words (`code`, stable, snake_case).  Faults of the
peer (bad frame, bad token) derive from `PeerError`; faults on our side
(upstream down, bugs) from `ServerError`.  Transports and flavours turn an
error into the client's own shape; none of them invent status codes.
"""

from __future__ import annotations

from collections.abc import Sequence

# RFC 6455 §7.4.1 close codes used by the transports.
WS_GOING_AWAY = 1001
WS_POLICY_VIOLATION = 1008
WS_MESSAGE_TOO_BIG = 1009
WS_INTERNAL_ERROR = 1011
WS_TRY_AGAIN_LATER = 1013
# The status a request's access line carries when its client left before any answer
# could be written (a WebSocket handshake cut off): nginx's "client closed request".
# Nothing is sent; aiohttp, finding the connection gone, logs only the access line.
CLIENT_GONE = 499


class GatewayError(Exception):
    """Root of every error the gateway reports to a client."""

    http_status = 500
    ws_close_code = WS_INTERNAL_ERROR
    code = "internal_error"
    # OpenAI's error "type" field; peer errors say invalid_request_error.
    openai_type = "server_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # When the client may try again (HTTP `Retry-After`), for 429 and 503.
        self.retry_after_s = retry_after_s


class PeerError(GatewayError):
    """The client sent something we cannot accept."""

    http_status = 400
    ws_close_code = WS_POLICY_VIOLATION
    code = "bad_request"
    openai_type = "invalid_request_error"


class ServerError(GatewayError):
    """Something on our side (or behind us) failed."""


class BadRequest(PeerError):
    pass


class ProtocolError(PeerError):
    """A frame that does not decode; `frame` is what the client should get back."""

    code = "protocol_error"

    def __init__(self, message: str, frame: object | None = None) -> None:
        super().__init__(message)
        self.frame = frame


class AuthError(PeerError):
    http_status = 401
    code = "invalid_token"
    openai_type = "authentication_error"

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        # Why, as one word of a fixed set (`gateway_auth_failures_total{reason}`).
        self.reason = reason


class Forbidden(PeerError):
    http_status = 403
    code = "forbidden"
    openai_type = "permission_error"


class NotFound(PeerError):
    """Unknown or not yours: both are 404 so no one learns what exists."""

    http_status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str, known: Sequence[str]) -> None:
        listed = ", ".join(known) if known else "none"
        super().__init__(f"The model '{model}' does not exist. Known models: {listed}")
        self.model = model
        self.known = list(known)


class Conflict(PeerError):
    http_status = 409
    code = "conflict"


class PayloadTooLarge(PeerError):
    http_status = 413
    ws_close_code = WS_MESSAGE_TOO_BIG
    code = "payload_too_large"


class UnsupportedMediaType(PeerError):
    http_status = 415
    code = "unsupported_media_type"


class RateLimited(PeerError):
    http_status = 429
    ws_close_code = WS_TRY_AGAIN_LATER
    code = "rate_limited"


class UpstreamError(ServerError):
    """The model server failed, was unreachable, or broke off a reply."""

    http_status = 502
    code = "upstream_error"


class Unavailable(ServerError):
    http_status = 503
    ws_close_code = WS_TRY_AGAIN_LATER
    code = "unavailable"


# A pure-API reply still running when a stopping replica's grace is over: its task
# is cancelled with this message, and its client told so in its own protocol
# (`edge/stopping.py`).
SERVER_STOPPING = "The gateway is stopping; ask again (another replica will answer)"


class DatabaseDown(Unavailable):
    """The database went away mid-run (a restart, a failover, the network): this
    request failed cleanly; the next ones work once it is back."""

    code = "store_unavailable"

    def __init__(self) -> None:
        super().__init__("The database is unavailable; try again shortly", retry_after_s=2)


class InternalError(ServerError):
    """A bug. Its message is safe to show; details go to the log only."""

    def __init__(self, message: str = "Internal server error") -> None:
        super().__init__(message)
