"""``GET /ws``: each text frame is one ``Message`` in JSON; acks, replies and
errors come back as frames of the same shape.

Authentication, checked before the upgrade so that a refusal is a real HTTP
status: the ``Authorization: Bearer`` header, or a single-use ``?ticket=`` from
``POST /ws-ticket``. Browsers that can do neither may instead send a first frame
``{"content": {"type": "auth", "text": TOKEN}}``. Tokens are never read from the
URL. A browser ``Origin`` must be on ``ALLOWED_ORIGINS``.

The socket carries the user's event stream: replies (of this socket's messages
and of queued ones), and messages the user's other connections sent, each with
its seq in the user's event log. Acks and errors come directly. A client that
reconnects resumes with ``?resume=<last seq>`` or a ``resume`` frame
(``{"content": {"type": "resume", "data": {"after_seq": N}}}``) and gets exactly
what it missed, in order; a ``reset`` frame first when part of it was trimmed.

The socket closes with 4401 when the token expires (a later ``auth`` frame for
the same user extends it), 1008 after repeated frame-rate violations, and 1013
when the client does not read its frames fast enough; what it missed stays in
the user's event stream. When the gateway stops (``gateway.lifecycle``), a new
socket is refused (503), each new message gets a ``draining`` error frame, and
once the messages in flight are answered and their replies delivered, the socket
closes with 1001 "reconnect".

Tracing: the connection's span (``GET /ws``) is a child of the upgrade request's
``traceparent`` header and lasts until the socket closes; each message's span is a
child of the ``traceparent`` in its ``context.labels``, else of the connection's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from dialog.v1 import message_pb2
from gateway import metrics, spans, tracing
from gateway.auth import Identity
from gateway.config import WS_SUBPROTOCOL
from gateway.conversation import Conversation
from gateway.errors import (
    DialogError,
    Draining,
    InvalidMessage,
    Overloaded,
    PermissionDenied,
    RateLimited,
    TooManyConnections,
    Unauthenticated,
)
from gateway.events import Subscription
from gateway.http.responses import error_response
from gateway.lifecycle import RECONNECT, Phase
from gateway.ratelimit import SlidingWindow
from gateway.service import DialogService
from gateway.translate import AUTH, make_ack, make_error, message_to_json, parse_message

log = logging.getLogger(__name__)
SURFACE = "ws"
ROUTE = "/ws"
SWITCHING_PROTOCOLS = 101
URL_TOKEN_PARAMS = ("token", "access_token", "jwt", "auth")
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_EXPIRED = 4401
CLOSE_POLICY = 1008
CLOSE_SLOW_CONSUMER = 1013
CLOSE_TRY_AGAIN = 1013
CLOSE_TIMEOUT_S = 10.0
RESUME_PARAM = "resume"
RESUME = "resume"
MAX_SEQ_DIGITS = 19


async def websocket_endpoint(ws: WebSocket) -> None:
    service: DialogService = ws.app.state.service
    span = spans.http_server_span(service.tracer, ws.scope, ROUTE)
    status = 500
    try:
        with tracing.current(span):
            status = await _serve(ws, service)
    finally:
        spans.end_http(span, status)


async def _serve(ws: WebSocket, service: DialogService) -> int:
    """Serve one socket; the HTTP status of its upgrade (101 once accepted)."""
    subprotocol = WS_SUBPROTOCOL if WS_SUBPROTOCOL in ws.scope.get("subprotocols", ()) else None
    try:
        service.drain.check()
        service.access.check_origin(ws.headers.get("origin"))
        after_seq = _resume_point(ws.query_params.get(RESUME_PARAM))
        identity = await _handshake_identity(ws, service)
        bridge, sub = None, None
        if identity is not None:
            await _open_connection(service, identity)
            bridge = Bridge(ws, service, identity)
            # Before the upgrade completes: what is published once the client is
            # connected is in its stream.
            sub = await _subscribe(service, bridge, after_seq)
    except DialogError as exc:
        await ws.send_denial_response(error_response(exc))
        return exc.http_status
    await ws.accept(subprotocol)
    if identity is None:
        identity = await _first_frame_identity(ws, service)
        if identity is None:
            return SWITCHING_PROTOCOLS
    metrics.WS_CONNECTIONS.inc()
    try:
        with service.drain.connection():
            await (bridge or Bridge(ws, service, identity)).run(after_seq, sub)
    finally:
        metrics.WS_CONNECTIONS.dec()
        await service.access.close_ws(identity)
    return SWITCHING_PROTOCOLS


def _resume_point(value: str | None) -> int:
    """The seq after which a resuming client wants its events (0: from now on)."""
    if value is None:
        return 0
    if not value.isdigit() or len(value) > MAX_SEQ_DIGITS:
        raise InvalidMessage(f"'{RESUME_PARAM}' must be the last seq received, a number")
    return int(value)


async def _handshake_identity(ws: WebSocket, service: DialogService) -> Identity | None:
    """The identity from the header or a ticket; ``None`` when neither was sent."""
    if any(p in ws.query_params for p in URL_TOKEN_PARAMS):
        raise InvalidMessage("tokens are not accepted in the URL; use a header or a ticket")
    headers = ws.headers.getlist("authorization")
    if headers:
        return await service.access.authenticate(headers, SURFACE)
    ticket = ws.query_params.get("ticket")
    if ticket is not None:
        return await service.access.redeem_ticket(ticket, SURFACE)
    return None


async def _subscribe(service: DialogService, bridge: Bridge, after_seq: int) -> Subscription:
    try:
        return await service.subscribe(bridge.identity, after_seq, owner=bridge)
    except BaseException:
        await service.access.close_ws(bridge.identity)
        raise


async def _open_connection(service: DialogService, identity: Identity) -> None:
    if not await service.access.open_ws(identity):
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
        identity = await service.access.authenticate_token(msg.content.text, SURFACE)
        await _open_connection(service, identity)
    except DialogError as exc:
        code = exc.ws_close if isinstance(exc, TooManyConnections) else Unauthenticated.ws_close
        await ws.close(code or CLOSE_POLICY, exc.message)
        return None
    return identity


class Bridge:
    """One authenticated socket: frames in, a ``Conversation``, frames out."""

    def __init__(self, ws: WebSocket, service: DialogService, identity: Identity):
        """``identity`` may change (a later ``auth`` frame), never its subject."""
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
        self._events: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None

    async def run(self, after_seq: int, sub: Subscription | None = None) -> None:
        """Serve the socket; its event stream is ``sub``, or one opened after ``after_seq``."""
        writer = asyncio.create_task(self._write(), name="ws-writer")
        try:
            await self._follow(after_seq, sub)
            async with asyncio.timeout(self._service.access.remaining_s(self._identity)) as expiry:
                if await self._read(expiry):
                    await self._deliver_rest()
        except TimeoutError:
            self._close = (CLOSE_EXPIRED, "token expired")
        except DialogError as exc:  # the event stream could not be opened
            self._close = (exc.ws_close or CLOSE_TRY_AGAIN, exc.message)
        except asyncio.CancelledError:
            if self._close is None or self._task is None:
                raise
            self._task.uncancel()
        finally:
            tasks = [t for t in (writer, self._events) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._close is not None:
            # A slow consumer may never read the close frame: give up after a while.
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._ws.close(*self._close)

    @property
    def identity(self) -> Identity:
        return self._identity

    async def _follow(self, after_seq: int, sub: Subscription | None = None) -> None:
        """(Re)start forwarding the user's event stream from after ``after_seq``."""
        if self._events is not None:
            self._events.cancel()
            await asyncio.gather(self._events, return_exceptions=True)
        if sub is None:
            sub = await self._service.subscribe(self._identity, after_seq, owner=self)
        self._sub = sub
        self._events = asyncio.create_task(self._forward_events(sub), name="ws-events")

    async def _deliver_rest(self) -> None:
        """The gateway is closing: deliver the events already logged and every frame
        queued, then close with 1001 "reconnect"."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._service.drain.remaining_s()):
                if self._events is not None:
                    self._events.cancel()
                    await asyncio.gather(self._events, return_exceptions=True)
                while self._sub is not None and (msg := await self._sub.next(0)) is not None:
                    await self._send(msg)
                await self._outbox.join()
        self._close = (Draining.ws_close, RECONNECT)

    async def _forward_events(self, sub: Subscription) -> None:
        try:
            while True:
                msg = await sub.next()
                if msg is not None:
                    await self._send(msg)
        except DialogError as exc:
            # The log cannot be read (the store is down): say so, then close.
            with contextlib.suppress(DialogError):
                await self._send(make_error(exc))
            self._abort(exc.ws_close or CLOSE_TRY_AGAIN, "event stream interrupted; resume")
        finally:
            self._service.unsubscribe(self._identity, sub)

    async def _read(self, expiry: asyncio.Timeout) -> bool:
        """Read frames until the client leaves (False) or the gateway is closing (True)."""
        config = self._service.config
        async with Conversation(
            self._service, self._identity, SURFACE, self._send, origin=self
        ) as conv:
            while True:
                event = await self._service.drain.before(Phase.CLOSING, self._ws.receive())
                if isinstance(event, Phase):
                    await conv.drain()  # every message in flight has its answer
                    return True
                if event["type"] == "websocket.disconnect":
                    return False
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
                try:
                    if msg.content.type == AUTH:
                        await self._reauthenticate(msg, expiry)
                    elif msg.content.type == RESUME:
                        await self._resume(msg)
                    else:
                        await conv.submit(msg)
                except DialogError as exc:
                    await conv.fail(exc, msg.id)

    async def _resume(self, msg: message_pb2.Message) -> None:
        """A ``resume`` frame: the event stream restarts after ``data.after_seq``."""
        field = msg.content.data.fields.get("after_seq")
        value = field.number_value if field is not None else -1.0
        if field is None or field.WhichOneof("kind") != "number_value" or value < 0:
            raise InvalidMessage("a resume frame needs data.after_seq, the last seq received")
        if value != int(value) or value >= 2**63:
            raise InvalidMessage("data.after_seq must be a whole number")
        await self._follow(int(value))
        await self._send(make_ack(msg))

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
        identity = await self._service.access.authenticate_token(msg.content.text, SURFACE)
        if identity.subject != self._identity.subject:
            raise PermissionDenied("a connection cannot change its user")
        self._identity = identity
        loop = asyncio.get_running_loop()
        expiry.reschedule(loop.time() + self._service.access.remaining_s(identity))
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
                self._outbox.task_done()
