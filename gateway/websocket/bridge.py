"""``GET /ws``: each text frame is one ``Message`` in JSON; acks, replies and
errors come back as frames of the same shape.

Authentication is the ``Authorization: Bearer`` header, checked before the
upgrade so that a bad token gets a real HTTP 401, or, for browsers that cannot
set headers, a first frame ``{"content": {"type": "auth", "text": TOKEN}}``.
Tokens are never read from the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from dialog.v1 import message_pb2
from gateway import metrics
from gateway.auth import Identity
from gateway.config import WS_SUBPROTOCOL
from gateway.conversation import Conversation
from gateway.errors import (
    DialogError,
    InvalidMessage,
    TooManyConnections,
    Unauthenticated,
)
from gateway.http.responses import error_response
from gateway.service import DialogService
from gateway.translate import AUTH, message_to_json, parse_message

log = logging.getLogger(__name__)
SURFACE = "ws"
URL_TOKEN_PARAMS = ("token", "access_token", "jwt", "auth")
CLOSE_AUTH_TIMEOUT = 4408


async def websocket_endpoint(ws: WebSocket) -> None:
    service: DialogService = ws.app.state.service
    subprotocol = WS_SUBPROTOCOL if WS_SUBPROTOCOL in ws.scope.get("subprotocols", ()) else None
    if any(p in ws.query_params for p in URL_TOKEN_PARAMS):
        await ws.send_denial_response(
            error_response(InvalidMessage("tokens are not accepted in the URL; use a header"))
        )
        return
    header = ws.headers.get("authorization")
    if header is not None:
        try:
            identity = await service.authenticate(header, SURFACE)
        except DialogError as exc:
            await ws.send_denial_response(error_response(exc))
            return
        if not service.ws_connections.try_open(identity.subject):
            metrics.RATE_LIMITED.labels(surface=SURFACE, limit="connections").inc()
            await ws.send_denial_response(
                error_response(TooManyConnections("too many open WebSocket connections"))
            )
            return
        await ws.accept(subprotocol)
    else:
        await ws.accept(subprotocol)
        first = await _first_frame_identity(ws, service)
        if first is None:
            return
        identity = first
    metrics.WS_CONNECTIONS.inc()
    try:
        await _bridge(ws, service, identity)
    finally:
        metrics.WS_CONNECTIONS.dec()
        service.ws_connections.close(identity.subject)


async def _first_frame_identity(ws: WebSocket, service: DialogService) -> Identity | None:
    """Wait for an ``auth`` frame; close 4408 on timeout, 4401 on a bad token."""
    timeout_s = service.config.auth_timeout_ms / 1000
    try:
        text = await asyncio.wait_for(ws.receive_text(), timeout_s)
    except TimeoutError:
        await ws.close(CLOSE_AUTH_TIMEOUT, "authentication timed out")
        return None
    except (WebSocketDisconnect, KeyError, RuntimeError):
        return None
    try:
        msg = parse_message(text, service.config.max_message_bytes)
        if msg.content.type != AUTH or not msg.content.text:
            raise Unauthenticated("the first frame must be an auth frame")
        identity = await service.authenticate(f"Bearer {msg.content.text}", SURFACE)
    except DialogError as exc:
        code = Unauthenticated.ws_close if not isinstance(exc, Unauthenticated) else exc.ws_close
        await ws.close(code or 4401, exc.message)
        return None
    if not service.ws_connections.try_open(identity.subject):
        metrics.RATE_LIMITED.labels(surface=SURFACE, limit="connections").inc()
        await ws.close(TooManyConnections.ws_close or 1008, "too many open WebSocket connections")
        return None
    return identity


async def _bridge(ws: WebSocket, service: DialogService, identity: Identity) -> None:
    """Feed frames to a ``Conversation``; one writer task sends what it produces."""
    outbox: asyncio.Queue[message_pb2.Message] = asyncio.Queue(service.config.outbound_queue_max)
    writer = asyncio.create_task(_write(ws, outbox), name="ws-writer")
    try:
        async with Conversation(service, identity, SURFACE, outbox.put) as conv:
            while True:
                event = await ws.receive()
                if event["type"] == "websocket.disconnect":
                    break
                text = event.get("text")
                if text is None:
                    await conv.fail(
                        InvalidMessage("binary frames are not supported; send JSON text")
                    )
                    continue
                try:
                    msg = parse_message(text, service.config.max_message_bytes)
                except DialogError as exc:
                    await conv.fail(exc)
                    continue
                await conv.submit(msg)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _write(ws: WebSocket, outbox: asyncio.Queue[message_pb2.Message]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            msg = await outbox.get()
            await ws.send_text(message_to_json(msg))
