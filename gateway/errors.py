"""The one error vocabulary of the gateway.

Every class declares how it surfaces on each transport: a gRPC status name, an
HTTP status and a WebSocket close code. ``ws_close`` is ``None`` when the error
is reported in an error frame and the socket stays open. The table is printed
in docs/protocol.md; ``error_table()`` builds it from these classes.

This module is part of the pure core: it imports no I/O library. The gRPC
status is a name of ``grpc.StatusCode``, resolved by the gRPC surface.
"""

from __future__ import annotations

from typing import ClassVar


class DialogError(Exception):
    """Base of every error a client can see. ``message`` is safe to show."""

    code: ClassVar[str] = "internal"
    grpc_status: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    ws_close: ClassVar[int | None] = 1011

    def __init__(
        self,
        message: str = "internal error",
        *,
        retry_after_s: float | None = None,
        details: dict[str, int | str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details or {}

    def to_json(self) -> dict[str, object]:
        """The JSON error body shared by every surface (``details`` join ``code`` and
        ``message``, e.g. ``expected_seq``)."""
        return {"error": {**self.details, "code": self.code, "message": self.message}}


class InvalidMessage(DialogError):
    """The input is not a valid message (bad JSON, unknown field, wrong type)."""

    code = "invalid_argument"
    grpc_status = "INVALID_ARGUMENT"
    http_status = 400
    ws_close = None


class Unauthenticated(DialogError):
    """No token, or a bad, expired or wrong-algorithm token."""

    code = "unauthenticated"
    grpc_status = "UNAUTHENTICATED"
    http_status = 401
    ws_close = 4401


class PermissionDenied(DialogError):
    """The caller is known but may not do this."""

    code = "permission_denied"
    grpc_status = "PERMISSION_DENIED"
    http_status = 403
    ws_close = 4403


class RequestTimeout(DialogError):
    """The client did not send its request in time."""

    code = "request_timeout"
    grpc_status = "DEADLINE_EXCEEDED"
    http_status = 408
    ws_close = None


class RequestHeadTooLarge(DialogError):
    """The request line and headers are over MAX_HEADER_BYTES."""

    code = "request_header_too_large"
    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 431
    ws_close = None


class NotFound(DialogError):
    """The HTTP path or resource does not exist."""

    code = "not_found"
    grpc_status = "NOT_FOUND"
    http_status = 404
    ws_close = None


class IdempotencyConflict(DialogError):
    """A message id was used before with another body, or its first delivery is still running."""

    code = "already_exists"
    grpc_status = "ALREADY_EXISTS"
    http_status = 409
    ws_close = None


class OutOfOrder(DialogError):
    """A message skipped part of its entity's order; ``expected_seq`` says what is due."""

    code = "failed_precondition"
    grpc_status = "FAILED_PRECONDITION"
    http_status = 409
    ws_close = None

    @classmethod
    def expecting(cls, entity: str, expected_seq: int) -> OutOfOrder:
        return cls(
            f"entity {entity!r} expects seq {expected_seq} next; send the missing messages first",
            details={"expected_seq": expected_seq},
        )


class NoRoute(DialogError):
    """No routing rule matches the message."""

    code = "unimplemented"
    grpc_status = "UNIMPLEMENTED"
    http_status = 404
    ws_close = None


class RateLimited(DialogError):
    """The caller sent more messages than the sliding window allows."""

    code = "rate_limited"
    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429
    ws_close = None


class TooManyConnections(DialogError):
    """The caller already holds the maximum number of WebSocket connections."""

    code = "too_many_connections"
    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429
    ws_close = 1008


class MessageTooLarge(DialogError):
    """A body, frame or gRPC message is over MAX_MESSAGE_BYTES."""

    code = "message_too_large"
    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 413
    ws_close = 1009


class BackendUnavailable(DialogError):
    """The back-end could not be reached after the retries."""

    code = "unavailable"
    grpc_status = "UNAVAILABLE"
    http_status = 503
    ws_close = None


class BackendRemoved(DialogError):
    """A configuration reload removed the back-end while the call was in flight.

    Not a ``BackendUnavailable``: the message is not queued for a back-end that is gone."""

    code = "backend_removed"
    grpc_status = "UNAVAILABLE"
    http_status = 503
    ws_close = None


class BackendTimeout(DialogError):
    """The back-end did not finish within the route's timeout."""

    code = "deadline_exceeded"
    grpc_status = "DEADLINE_EXCEEDED"
    http_status = 504
    ws_close = None


class BackendFailed(DialogError):
    """The back-end answered with an error of its own."""

    code = "backend_error"
    grpc_status = "INTERNAL"
    http_status = 502
    ws_close = None


class Overloaded(DialogError):
    """A bounded queue is full because the client reads too slowly."""

    code = "overloaded"
    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 503
    ws_close = 1013


class ServerBusy(DialogError):
    """The process sheds new work: too many messages are in flight."""

    code = "server_busy"
    grpc_status = "UNAVAILABLE"
    http_status = 503
    ws_close = 1013


class StoreUnavailable(DialogError):
    """The message store (SQLite or Redis) cannot be used right now."""

    code = "store_unavailable"
    grpc_status = "UNAVAILABLE"
    http_status = 503
    ws_close = 1013


class Draining(DialogError):
    """The gateway is shutting down: it takes no new work, and a message it could not
    finish before the drain deadline is cancelled. Reconnect (and resend what was not
    answered). On a WebSocket, an error frame per message, then close 1001 "reconnect"."""

    code = "draining"
    grpc_status = "UNAVAILABLE"
    http_status = 503
    ws_close = 1001


class Internal(DialogError):
    """An unexpected failure. Its details are logged, never shown."""


ERROR_CLASSES: tuple[type[DialogError], ...] = (
    InvalidMessage,
    Unauthenticated,
    PermissionDenied,
    RequestTimeout,
    RequestHeadTooLarge,
    NotFound,
    IdempotencyConflict,
    OutOfOrder,
    NoRoute,
    RateLimited,
    TooManyConnections,
    MessageTooLarge,
    BackendUnavailable,
    BackendRemoved,
    BackendTimeout,
    BackendFailed,
    Overloaded,
    ServerBusy,
    StoreUnavailable,
    Draining,
    Internal,
)


def error_table() -> list[tuple[str, str, str, int, str]]:
    """Rows of (class, code, gRPC status, HTTP status, WebSocket close) for the docs."""
    return [
        (
            cls.__name__,
            cls.code,
            cls.grpc_status,
            cls.http_status,
            "error frame" if cls.ws_close is None else str(cls.ws_close),
        )
        for cls in ERROR_CLASSES
    ]


# The HTTP status of each gRPC status a back-end answers with, when its method is called
# over HTTP/JSON (transcoding, ``gateway.transcode``): google/rpc/code.proto's mapping, as
# grpc-gateway and Google's API front ends apply it. The errors above are the gateway's
# own; these are the back-ends', passed on. docs/mesh.md prints the table.
GRPC_HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def http_status_of(grpc_status: str) -> int:
    """The HTTP status of a back-end's gRPC status name (500 for a name gRPC does not have)."""
    return GRPC_HTTP_STATUS.get(grpc_status, 500)
