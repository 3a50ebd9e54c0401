"""The Starlette application of the HTTPS port."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from gateway import metrics
from gateway.errors import DialogError, Internal, InvalidMessage, NotFound, Unauthenticated
from gateway.grpc.descriptors import Catalog
from gateway.health import HealthMonitor
from gateway.http.events import event_stream
from gateway.http.headers import Cors, SecurityHeaders
from gateway.http.messages import post_message
from gateway.http.responses import error_response, json_response
from gateway.http.tickets import post_ws_ticket
from gateway.http.transcoding import Transcoder, TranscodingRoute
from gateway.openapi import VERSION, openapi_document
from gateway.service import DialogService
from gateway.websocket.bridge import websocket_endpoint

log = logging.getLogger(__name__)


async def health(request: Request) -> Response:
    """Back-end health and, when configured, the JWKS key set.

    A JWKS outage with last good keys is reported (``"stale"``) but keeps 200; a JWKS that
    never loaded (``"unavailable"``: no JWKS token can be verified) makes it 503. A draining
    process (SIGTERM) answers 503 with the status ``"DRAINING"``.
    """
    monitor: HealthMonitor = request.app.state.health
    service: DialogService = request.app.state.service
    body = monitor.snapshot(breakers=service.pool.breakers_json())
    ok = monitor.overall_ok() and not service.drain.draining
    body["status"] = "DRAINING" if service.drain.draining else "SERVING" if ok else "NOT_SERVING"
    jwks = service.authenticator.jwks_status()
    if jwks is not None:
        body["jwks"] = jwks
    return json_response(body, 200 if ok else 503)


async def openapi_json(request: Request) -> Response:
    """The API's shape, like server reflection, is for authenticated callers only. The
    gateway's own document, with the back-ends' transcoded routes as they are now."""
    service: DialogService = request.app.state.service
    try:
        await service.access.authenticate(request.headers.getlist("authorization"), "http")
    except DialogError as exc:
        return error_response(exc)
    transcoder: Transcoder | None = request.app.state.transcoder
    own = request.app.state.openapi
    return json_response(transcoder.openapi(own) if transcoder else own)


async def prometheus_metrics(request: Request) -> Response:
    """The Prometheus text format, or OpenMetrics (with the latency histograms' trace-id
    exemplars) for a client that asks for it with ``Accept: application/openmetrics-text``."""
    expected = request.app.state.metrics_token
    if expected:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return error_response(Unauthenticated("metrics need the metrics token"))
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(metrics.exposed_registry()), media_type=content_type)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such path"))
    if exc.status_code == 405:
        error = InvalidMessage("method not allowed")
        response = error_response(error)
        response.status_code = 405
        # RFC 9110 section 15.5.6: a 405 MUST list the allowed methods (Starlette sets it).
        response.headers.update(exc.headers or {})
        return response
    return error_response(InvalidMessage(str(exc.detail)))


async def _dialog_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DialogError)
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(Internal())


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: _http_error,
    DialogError: _dialog_error,
    Exception: _unexpected,
}


def path_methods(
    routes: list[BaseRoute], transcoder: Transcoder | None
) -> Callable[[str], tuple[str, ...]]:
    """The HTTP methods of the routes at a raw path: a route of the gateway's own, or a
    transcoded one (read from the current table)."""
    own = {r.path: tuple(sorted(r.methods or ())) for r in routes if isinstance(r, Route)}

    def methods(path: str) -> tuple[str, ...]:
        if path in own:
            return own[path]
        return transcoder.table().methods(path) if transcoder is not None else ()

    return methods


def build_app(
    service: DialogService,
    monitor: HealthMonitor,
    catalog: Callable[[], Catalog] | None = None,
) -> Starlette:
    """The public application. ``/metrics`` is here unless ``ADMIN_PORT`` moves it. With
    ``catalog`` (the reflection catalog of the gRPC port), the back-ends' methods are
    offered over HTTP/JSON after the gateway's own routes (``gateway.http.transcoding``).
    CORS (``gateway.http.headers.Cors``) follows ``ALLOWED_ORIGINS`` as it is now, and
    answers preflights with the methods of the path's routes, transcoded ones included."""
    config = service.config
    routes: list[BaseRoute] = [
        Route("/messages", post_message, methods=["POST"]),
        Route("/ws-ticket", post_ws_ticket, methods=["POST"]),
        Route("/events/stream", event_stream, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        WebSocketRoute("/ws", websocket_endpoint),
    ]
    if not config.admin_port:
        routes.append(Route("/metrics", prometheus_metrics, methods=["GET"]))
    transcoder = None
    if catalog is not None:
        own = {r.path for r in routes if isinstance(r, Route | WebSocketRoute)} | {"/metrics"}
        transcoder = Transcoder(catalog, reserved=own)
        routes.append(TranscodingRoute(transcoder))  # last: after every route of its own
    middleware = [
        Middleware(SecurityHeaders, tls=config.tls),
        Middleware(
            Cors, policy=lambda: service.access.cors, methods=path_methods(routes, transcoder)
        ),
    ]
    app = _app(routes, middleware, service, monitor)
    app.state.transcoder = transcoder
    return app


def build_admin_app(service: DialogService, monitor: HealthMonitor) -> Starlette:
    """The admin listener of ``ADMIN_PORT``: ``/metrics`` and ``/health``."""
    routes: list[BaseRoute] = [
        Route("/metrics", prometheus_metrics, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return _app(routes, [Middleware(SecurityHeaders, tls=False)], service, monitor)


def _app(
    routes: list[BaseRoute],
    middleware: list[Middleware],
    service: DialogService,
    monitor: HealthMonitor,
) -> Starlette:
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS)
    app.state.service = service
    app.state.health = monitor
    app.state.metrics_token = service.config.metrics_token
    app.state.openapi = openapi_document(VERSION)
    app.state.transcoder = None
    return app
