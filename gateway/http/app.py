"""The Starlette application of the HTTPS port."""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from gateway import metrics
from gateway.errors import DialogError, Internal, InvalidMessage, NotFound
from gateway.health import HealthMonitor
from gateway.http.events import event_stream
from gateway.http.messages import post_message
from gateway.http.responses import error_response, json_response
from gateway.service import DialogService
from gateway.websocket.bridge import websocket_endpoint

log = logging.getLogger(__name__)


async def health(request: Request) -> Response:
    monitor: HealthMonitor = request.app.state.health
    return json_response(monitor.snapshot(), 200 if monitor.overall_ok() else 503)


async def prometheus_metrics(request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such path"))
    if exc.status_code == 405:
        error = InvalidMessage("method not allowed")
        response = error_response(error)
        response.status_code = 405
        return response
    return error_response(InvalidMessage(str(exc.detail)))


async def _dialog_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DialogError)
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(Internal())


def build_app(service: DialogService, monitor: HealthMonitor) -> Starlette:
    app = Starlette(
        routes=[
            Route("/messages", post_message, methods=["POST"]),
            Route("/events/stream", event_stream, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prometheus_metrics, methods=["GET"]),
            WebSocketRoute("/ws", websocket_endpoint),
        ],
        exception_handlers={
            HTTPException: _http_error,
            DialogError: _dialog_error,
            Exception: _unexpected,
        },
    )
    app.state.service = service
    app.state.health = monitor
    return app
