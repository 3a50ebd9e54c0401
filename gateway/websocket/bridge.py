"""``GET /ws``: each text frame is one ``Message`` in JSON; acks, replies and
errors come back as frames of the same shape.

Authentication, checked before the upgrade so that a refusal is a real HTTP
status: the ``Authorization: Bearer`` header, or a single-use ``?ticket=`` from
``POST /ws-ticket``. Browsers that can do neither may instead send a first frame
``{"content": {"type": "auth", "text": TOKEN}}``. Tokens are never read from the
URL. A browser ``Origin`` must be on ``ALLOWED_ORIGINS``.

The socket closes with 4401 when the token expires (a later ``auth`` frame for
the same user extends it), 1008 after repeated frame-rate violations, and 1013
when the client does not read its frames fast enough; what it missed stays in
the user's event stream.
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
    Overloaded,
    PermissionDenied,
    RateLimited,
    TooManyConnections,
    Unauthenticated,
)
from gateway.http.responses import error_response
from gateway.ratelimit import SlidingWindow
from gateway.service import DialogService
from gateway.translate import AUTH, make_ack, message_to_json, parse_message

log = logging.getLogger(__name__)
SURFACE = "ws"
URL_TOKEN_PARAMS = ("token", "access_token", "jwt", "auth")
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_EXPIRED = 4401
CLOSE_POLICY = 1008
CLOSE_SLOW_CONSUMER = 1013
CLOSE_TIMEOUT_S = 10.0


async def websocket_endpoint(ws: WebSocket) -> None:
    service: DialogService = ws.app.state.service
    subprotocol = WS_SUBPROTOCOL if WS_SUBPROTOCOL in ws.scope.get("subprotocols", ()) else None
    try:
        service.check_origin(ws.headers.get("origin"))
        identity = await _handshake_identity(ws, service)
        if identity is not None:
            _open_connection(service, identity)
    except DialogError as exc:
        await ws.send_denial_response(error_response(exc))
        return
    await ws.accept(subprotocol)
    if identity is None:
        identity = await _first_frame_identity(ws, service)
        if identity is None:
            return
    metrics.WS_CONNECTIONS.inc()
    try:
        await Bridge(ws, service, identity).run()
    finally:
        metrics.WS_CONNECTIONS.dec()
        service.ws_connections.close(identity.subject)


async def _handshake_identity(ws: WebSocket, service: DialogService) -> Identity | None:
    """The identity from the header or a ticket; ``None`` when neither was sent."""
    if any(p in ws.query_params for p in URL_TOKEN_PARAMS):
        raise InvalidMessage("tokens are not accepted in the URL; use a header or a ticket")
    headers = ws.headers.getlist("authorization")
    if headers:
        return await service.authenticate(headers, SURFACE)
    ticket = ws.query_params.get("ticket")
    if ticket is not None:
        return service.redeem_ticket(ticket, SURFACE)
    return None


def _open_connection(service: DialogService, identity: Identity) -> None:
    if not service.ws_connections.try_open(identity.subject):
        metrics.RATE_LIMITED.labels(surface=SURFACE, limit="connections").inc()
        raise TooManyConnections("too many open WebSocket connections")


async def _first_frame_identity(ws: WebSocket, service: DialogService) -> Identity | None:
    """Wait for an ``auth`` frame; close 4408 on timeout, 4401 on a bad token."""
    try:
        text = await asyncio.wait_for(ws.receive_text(), service.config.auth_timeout_ms / 1000)
    except TimeoutError:
        await ws.close(CLOSE_AUTH_TIMEOUT, "authentication timed out")
        return None
    except (WebSocketDisconnect, KeyError, RuntimeError):
        return None
    try:
        msg = parse_message(text, service.config.max_message_bytes, service.config.json_max_depth)
        if msg.content.type != AUTH or not msg.content.text:
            raise Unauthenticated("the first frame must be an auth frame")
        identity = await service.authenticate_token(msg.content.text, SURFACE)
        _open_connection(service, identity)
    except DialogError as exc:
        code = exc.ws_close if isinstance(exc, TooManyConnections) else Unauthenticated.ws_close
        await ws.close(code or CLOSE_POLICY, exc.message)
        return None
    return identity


class Bridge:
    """One authenticated socket: frames in, a ``Conversation``, frames out."""

    def __init__(self, ws: WebSocket, service: DialogService, identity: Identity):
        self._ws = ws
        self._service = service
        self._identity = identity
        config = service.config
        self._outbox: asyncio.Queue[message_pb2.Message] = asyncio.Queue(config.outbound_queue_max)
        self._frames = SlidingWindow(
            config.ws_message_rate_max, config.ws_message_rate_window_ms / 1000
        )
        self._violations = 0
        self._close: tuple[int, str] | None = None
        self._task = asyncio.current_task()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write(), name="ws-writer")
        try:
            async with asyncio.timeout(self._service.remaining_s(self._identity)) as expiry:
                await self._read(expiry)
        except TimeoutError:
            self._close = (CLOSE_EXPIRED, "token expired")
        except asyncio.CancelledError:
            if self._close is None or self._task is None:
                raise
            self._task.uncancel()
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self._close is not None:
            # A slow consumer may never read the close frame: give up after a while.
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._ws.close(*self._close)

    async def _read(self, expiry: asyncio.Timeout) -> None:
        config = self._service.config
        async with Conversation(self._service, self._identity, SURFACE, self._send) as conv:
            while True:
                event = await self._ws.receive()
                if event["type"] == "websocket.disconnect":
                    return
                if not self._frame_allowed():
                    await conv.fail(
                        RateLimited("too many frames on this connection", retry_after_s=1)
                    )
                    continue
                text = event.get("text")
                try:
                    if text is None:
                        raise InvalidMessage("binary frames are not supported; send JSON text")
                    msg = parse_message(text, config.max_message_bytes, config.json_max_depth)
                except DialogError as exc:
                    await conv.fail(exc)
                    continue
                if msg.content.type != AUTH:
                    await conv.submit(msg)
                    continue
                try:
                    await self._reauthenticate(msg, expiry)
                except DialogError as exc:
                    await conv.fail(exc, msg.id)

    def _frame_allowed(self) -> bool:
        """The per-connection frame rate; repeated violations close the socket (1008)."""
        if self._frames.acquire("", asyncio.get_running_loop().time()) is None:
            return True
        metrics.RATE_LIMITED.labels(surface=SURFACE, limit="frames").inc()
        self._violations += 1
        if self._violations > self._service.config.ws_rate_violations_max:
            self._abort(CLOSE_POLICY, "frame rate exceeded")
        return False

    async def _reauthenticate(self, msg: message_pb2.Message, expiry: asyncio.Timeout) -> None:
        """A fresh token for the same user extends the socket's life."""
        identity = await self._service.authenticate_token(msg.content.text, SURFACE)
        if identity.subject != self._identity.subject:
            raise PermissionDenied("a connection cannot change its user")
        self._identity = identity
        loop = asyncio.get_running_loop()
        expiry.reschedule(loop.time() + self._service.remaining_s(identity))
        await self._send(make_ack(msg))

    async def _send(self, msg: message_pb2.Message) -> None:
        """Queue a frame; a client that lets the queue fill up is closed with 1013."""
        if self._close is not None:
            raise Overloaded("the connection is closing")
        try:
            self._outbox.put_nowait(msg)
        except asyncio.QueueFull:
            metrics.RATE_LIMITED.labels(surface=SURFACE, limit="slow_consumer").inc()
            self._abort(CLOSE_SLOW_CONSUMER, "client too slow; resume from the event stream")
            raise Overloaded("client too slow") from None

    def _abort(self, code: int, reason: str) -> None:
        if self._close is None and self._task is not None:
            self._close = (code, reason)
            self._task.cancel()

    async def _write(self) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                msg = await self._outbox.get()
                await self._ws.send_text(message_to_json(msg))
