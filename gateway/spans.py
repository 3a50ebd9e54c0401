"""The spans of the surfaces and of the back-end calls, after the OpenTelemetry semantic
conventions for HTTP, RPC and messaging.

Each helper starts a span (never the current one: ``gateway.tracing.current`` makes it so)
or ends one with its outcome. A span's parent is the trace context its transport carried
(``gateway.tracing``). Attributes never hold a token, a header value or message content.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from dialog.v1 import message_pb2
from gateway.errors import DialogError
from gateway.tracing import from_headers, from_metadata, take_from_labels

T = TypeVar("T")

GATEWAY_SERVICE = "dialog.v1.Gateway"
BACKEND_SERVICE = "dialog.backend.v1.Backend"
BACKEND_METHOD = "Converse"
# (messaging.system, messaging.destination.name) of the surfaces that carry many messages.
MESSAGE_DESTINATIONS = {"ws": ("websocket", "/ws"), "grpc": ("grpc", f"{GATEWAY_SERVICE}/Converse")}
# OpenTelemetry RPC conventions: the codes that make a server span an error.
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


def _host_port(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` too) split in two."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            host, port = value, ""
    return host, int(port) if port.isdigit() else None


def http_server_span(tracer: Tracer, scope: Mapping[str, Any], route: str) -> Span:
    """The span of one HTTP request (or WebSocket upgrade) on ``route``, child of the
    ``traceparent`` its headers carry. Started, not current."""
    method = scope.get("method", "GET")
    headers = scope.get("headers", ())
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "http.route": route,
        "url.path": scope.get("path", route),
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    host = next((v.decode("latin-1") for k, v in headers if k.lower() == b"host"), "")
    server = scope.get("server") or ("", None)
    address, port = _host_port(host) if host else (server[0], server[1])
    if address:
        attributes["server.address"] = address
    if port:
        attributes["server.port"] = port
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    return tracer.start_span(
        f"{method} {route}",
        context=from_headers(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def end_http(span: Span, status: int) -> None:
    """Record the response status; a 5xx is an error of a server span."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()


async def ending(span: Span, body: AsyncGenerator[T, None]) -> AsyncIterator[T]:
    """``body``, and the end of ``span`` (status 200, sent already) when it ends."""
    try:
        async with contextlib.aclosing(body) as items:
            async for item in items:
                yield item
    finally:
        end_http(span, 200)


def grpc_server_span(
    tracer: Tracer,
    method: str,
    metadata: Iterable[tuple[str, str | bytes]] | None,
    peer: str,
    *,
    service: str = GATEWAY_SERVICE,
) -> Span:
    """The span of one call to ``service`` (a ``dialog.v1.Gateway`` call, or a back-end's
    call that the gateway relays), child of the metadata's ``traceparent``.

    ``peer`` is ``grpc.aio.ServicerContext.peer()`` (``ipv4:127.0.0.1:5000``)."""
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
    }
    family, _, address = peer.partition(":")
    if family in ("ipv4", "ipv6"):
        host, port = _host_port(address)
        attributes["client.address"] = host
        if port:
            attributes["client.port"] = port
    return tracer.start_span(
        f"{service}/{method}",
        context=from_metadata(metadata),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def _grpc_code(name: str) -> int:
    code = grpc.StatusCode[name] if name in grpc.StatusCode.__members__ else None
    return int(code.value[0]) if code is not None else int(grpc.StatusCode.UNKNOWN.value[0])


def end_rpc(span: Span, code: str, *, client: bool = False) -> None:
    """Record the gRPC status ``code`` (a ``grpc.StatusCode`` name) and end ``span``.

    A client span is an error for any status but OK; a server span only for the codes
    that say the server failed."""
    span.set_attribute("rpc.grpc.status_code", _grpc_code(code))
    if code != "OK" and (client or code in SERVER_ERROR_CODES):
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def message_span(tracer: Tracer, surface: str, msg: message_pb2.Message, default: Context) -> Span:
    """The span of one message read from a WebSocket or a ``Converse`` stream.

    Its parent is the trace context of the message's own labels, which are removed, with a
    link to the connection's span; without one it is a child of ``default``, the context
    of the connection (the WebSocket upgrade, the gRPC call)."""
    system, destination = MESSAGE_DESTINATIONS[surface]
    own = take_from_labels(msg)
    connection = trace.get_current_span(default).get_span_context()
    links = [Link(connection)] if own is not None and connection.is_valid else None
    attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": destination,
    }
    if msg.id:
        attributes["messaging.message.id"] = msg.id
    return tracer.start_span(
        f"process {destination}",
        context=own if own is not None else default,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    )


def admitted(span: Span, msg_id: str, backend: str) -> None:
    """Name the message (its id may be the gateway's) and its back-end on ``span``."""
    span.set_attribute("messaging.message.id", msg_id)
    span.set_attribute("dialog.backend", backend)


def end_message(span: Span, error: DialogError | None = None) -> None:
    """End a message span; an error that is the gateway's or a back-end's marks it."""
    if error is not None:
        span.set_attribute("error.type", error.code)
        if error.http_status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    span.end()


def backend_span(
    tracer: Tracer, backend: str, target: str, msg_id: str, attempt: int, parent: Context
) -> Span:
    """The span of one attempt to forward ``msg_id`` to ``backend`` (at ``target``)."""
    host, port = _host_port(target.removeprefix("dns:///"))
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": BACKEND_SERVICE,
        "rpc.method": BACKEND_METHOD,
        "server.address": host,
        "dialog.backend": backend,
        "dialog.message.id": msg_id,
        "dialog.attempt": attempt,
    }
    if port:
        attributes["server.port"] = port
    return tracer.start_span(
        f"{BACKEND_SERVICE}/{BACKEND_METHOD}",
        context=parent,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
