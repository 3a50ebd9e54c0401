"""The HTTP/JSON routes of the back-ends' gRPC methods (transcoding): the asyncio shell.

``TranscodingRoute`` comes after the gateway's own routes. It matches a request against the
table that ``gateway.transcode`` compiles from the current reflection ``Catalog`` (compiled
again whenever reflection learns something new, without a restart), so that a path no
method serves stays the gateway's ``404 not_found``, and a path served for other HTTP
methods is ``405`` with ``Allow``. A path of the RPC shape (``POST /pkg.Service/Method``) is
resolved only after authentication, like a gRPC call.

Each call, in order, as on the gRPC port (``gateway.grpc.proxy``): the drain; the token;
the route; the back-end's scopes; the per-user rate limit (one call, one message); the
request message, built from the path, the query and the JSON body; a place among the
process's work in flight (``MAX_INFLIGHT``, shared with dialog messages and the gRPC port's
relayed calls: 503 ``server_busy`` with ``Retry-After`` when it is full); then the call itself
(``gateway.http.transcoded_calls``), with the proxy's metadata rules
(``outgoing_metadata``: ``x-dialog-user``, the allowed headers, and this request's span as
``traceparent``). A server stream answers ``text/event-stream`` when ``Accept`` asks for it,
else JSON lines (``application/x-ndjson``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import Message
from opentelemetry.trace import Span
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Match, NoMatchFound, request_response
from starlette.types import Receive, Scope, Send

from gateway import metrics, spans, tracing
from gateway.auth import Identity, require_scopes
from gateway.config import BackendConfig
from gateway.errors import DialogError, InvalidMessage, PermissionDenied
from gateway.grpc.descriptors import Catalog
from gateway.grpc.proxy import Metadata, allowed_metadata, outgoing_metadata
from gateway.http.body import read_limited
from gateway.http.responses import error_response, json_response
from gateway.http.transcoded_calls import call_stream, call_unary
from gateway.service import DialogService
from gateway.transcode.openapi import merged_document
from gateway.transcode.request import build_request
from gateway.transcode.response import error_json
from gateway.transcode.stream import stream_type
from gateway.transcode.table import (
    Endpoint,
    Matched,
    RpcPath,
    TranscodingTable,
    WrongMethod,
    compile_table,
)

log = logging.getLogger(__name__)

SURFACE = "http"
SCOPE_KEY = "dialog.transcoded"  # the table and the match, from ``matches`` to the endpoint
RPC_ROUTE = "/{service}/{method}"  # the route name of an RPC path no method serves


class Transcoder:
    """The table of the current catalog: compiled again when reflection replaces the
    catalog, its problems logged once."""

    def __init__(self, catalog: Callable[[], Catalog], reserved: Iterable[str]):
        self._catalog = catalog
        self._reserved = frozenset(reserved)
        self._source: Catalog | None = None
        self._table = TranscodingTable(reserved=self._reserved)
        self._document: tuple[TranscodingTable, dict[str, Any]] | None = None

    def table(self) -> TranscodingTable:
        catalog = self._catalog()
        if catalog is not self._source:
            self._table = compile_table(catalog, self._reserved)
            self._source = catalog
            for problem in self._table.problems:
                log.warning("transcoding: %s", problem)
        return self._table

    def openapi(self, own: dict[str, Any]) -> dict[str, Any]:
        """``own`` with the current routes' paths and schemas."""
        table = self.table()
        if self._document is None or self._document[0] is not table:
            self._document = (table, merged_document(own, table))
        return self._document[1]


class TranscodingRoute(BaseRoute):
    """Every transcoded route, as one Starlette route (see the module docstring)."""

    def __init__(self, transcoder: Transcoder):
        self.transcoder = transcoder
        self._app = request_response(transcode)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        table = self.transcoder.table()
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        found = table.match(scope["method"], path.partition("?")[0])
        if found is None:
            return Match.NONE, {}
        kind = Match.PARTIAL if isinstance(found, WrongMethod) else Match.FULL
        return kind, {SCOPE_KEY: (table, found)}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def method_not_allowed(allowed: Iterable[str]) -> Response:
    """405 with ``Allow`` (RFC 9110 section 15.5.6)."""
    response = json_response(error_json(InvalidMessage("method not allowed")), 405)
    response.headers["Allow"] = ", ".join(allowed)
    return response


def gateway_error(error: DialogError) -> Response:
    """The gateway's own ``error`` in the one error shape, with its headers."""
    headers = dict(error_response(error).headers)
    for name in ("content-length", "content-type"):
        headers.pop(name, None)
    return json_response(error_json(error), error.http_status, headers)


async def transcode(request: Request) -> Response:
    table, found = request.scope[SCOPE_KEY]
    if isinstance(found, WrongMethod):
        return method_not_allowed(found.allowed)
    service: DialogService = request.app.state.service
    endpoint = _known(table, found)
    label = f"{endpoint.http_method} {endpoint.route}" if endpoint else f"POST {RPC_ROUTE}"
    started, code, streaming = time.monotonic(), 500, False
    span = spans.http_server_span(service.tracer, request.scope, label.partition(" ")[2])
    try:
        response = await _admitted(request, service, table, found, span)
        code, streaming = response.status_code, isinstance(response, StreamingResponse)
        return response
    except DialogError as exc:
        code = exc.http_status
        return gateway_error(exc)
    finally:
        metrics.REQUEST_SECONDS.labels(surface=SURFACE, method=label, code=str(code)).observe(
            time.monotonic() - started, exemplar=tracing.exemplar(span)
        )
        if not streaming:
            spans.end_http(span, code)


def _known(table: TranscodingTable, found: Matched | RpcPath) -> Endpoint | None:
    """The endpoint of the route, when it is known before authentication."""
    if isinstance(found, Matched):
        return found.endpoint
    return table.rpcs.get(found.path)


async def _admitted(
    request: Request,
    service: DialogService,
    table: TranscodingTable,
    found: Matched | RpcPath,
    span: Span,
) -> Response:
    """Admit the request (drain, token, route, scopes, rate), then call its method."""
    service.drain.check()
    identity = await service.access.authenticate(request.headers.getlist("authorization"), SURFACE)
    if isinstance(found, RpcPath):
        resolved = table.rpc(request.method, found.path)
        if isinstance(resolved, WrongMethod):
            return method_not_allowed(resolved.allowed)
        found = resolved
    endpoint = found.endpoint
    backend = service.pool.configs[endpoint.backend]
    try:
        require_scopes(identity, backend.call_scopes(endpoint.service, endpoint.method))
    except PermissionDenied:
        metrics.AUTH_FAILURES.labels(surface=SURFACE, reason="scope").inc()
        raise
    await service.access.rate_limit(identity, SURFACE)
    message = await _request_message(request, service, table, found)
    metadata = _metadata(request, backend, identity, span)
    # Taken once the body is in (a slow upload holds no place), given back when the call
    # ends: a stream's when its last frame is sent.
    slot = service.hold_inflight(SURFACE)
    if endpoint.streaming:
        media_type = stream_type(request.headers.get("accept", ""))
        args = (service, table, endpoint, message, metadata, identity, span, slot)
        return await call_stream(media_type, *args)
    with slot:
        return await call_unary(service, table, endpoint, message, metadata, identity)


async def _request_message(
    request: Request, service: DialogService, table: TranscodingTable, found: Matched
) -> Message:
    config = service.config
    body = await read_limited(request, config.max_message_bytes, config.body_timeout_ms / 1000)
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if body.strip() and content_type not in ("", "application/json"):
        raise InvalidMessage("Content-Type must be application/json")
    endpoint = found.endpoint
    return build_request(
        endpoint.request_type,
        endpoint.body,
        found.bindings,
        request.query_params.multi_items(),
        body,
        max_bytes=config.max_message_bytes,
        max_depth=config.json_max_depth,
        pool=table.pool,
    )


def _metadata(request: Request, backend: BackendConfig, identity: Identity, span: Span) -> Metadata:
    """The proxy's metadata rules, applied to the request's headers; the trace context is
    this request's span."""
    allowed = allowed_metadata(backend)
    incoming: list[tuple[str, str | bytes]] = []
    for name, value in request.headers.items():
        if name not in allowed or not (value.isascii() and value.isprintable()):
            continue
        if name.endswith("-bin"):
            try:
                incoming.append((name, base64.b64decode(value, validate=True)))
            except binascii.Error:
                raise InvalidMessage(f"header {name!r} is not base64") from None
        else:
            incoming.append((name, value))
    return outgoing_metadata(incoming, allowed, identity, tracing.carrier(span))
