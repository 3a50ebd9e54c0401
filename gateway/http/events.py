"""``GET /events/stream``: every message delivered to the caller, as server-sent events.

Authentication is the ``Authorization`` header or, for ``EventSource`` in a
browser, a single-use ``?ticket=``. The stream ends when the token expires, and when
the gateway stops: once its work in flight is answered, the events already logged,
then ``event: reconnect`` (resume with ``Last-Event-ID``). A draining gateway refuses
new streams (503). The stream's span, a child of its ``traceparent`` header, lasts as
long as the stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dialog.v1 import message_pb2
from gateway import spans
from gateway.auth import Identity
from gateway.errors import DialogError, Unauthenticated
from gateway.events import Subscription
from gateway.http.responses import error_response
from gateway.http.sse import HEARTBEAT, last_event_id, sse_event
from gateway.lifecycle import RECONNECT, Phase
from gateway.service import DialogService
from gateway.translate import ERROR, RESET, make_error, message_to_json

SURFACE = "http"
ROUTE = "/events/stream"
RECONNECT_TEXT = "the gateway is restarting; reconnect with Last-Event-ID to resume"


async def _identity(request: Request, service: DialogService) -> Identity:
    service.access.check_origin(request.headers.get("origin"))
    ticket = request.query_params.get("ticket")
    if ticket is not None and "authorization" not in request.headers:
        return await service.access.redeem_ticket(ticket, SURFACE)
    return await service.access.authenticate(request.headers.getlist("authorization"), SURFACE)


async def event_stream(request: Request) -> Response:
    service: DialogService = request.app.state.service
    span = spans.http_server_span(service.tracer, request.scope, ROUTE)
    try:
        service.drain.check()
        identity = await _identity(request, service)
        after = last_event_id(request.headers.get("last-event-id"))
        sub = await service.subscribe(identity, after)
    except DialogError as exc:
        spans.end_http(span, exc.http_status)
        return error_response(exc)
    except BaseException:
        spans.end_http(span, 500)
        raise
    heartbeat_s = service.config.sse_heartbeat_ms / 1000

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield HEARTBEAT
            while (remaining_s := service.access.remaining_s(identity)) > 0:
                next_msg = sub.next(min(heartbeat_s, remaining_s))
                msg = await service.drain.before(Phase.CLOSING, next_msg)
                if isinstance(msg, Phase):
                    async for event in _last_events(sub):
                        yield event
                    return
                if msg is None:
                    yield HEARTBEAT
                elif service.access.remaining_s(identity) > 0:
                    yield _event(msg)
            raise Unauthenticated("token expired")
        except DialogError as exc:
            yield sse_event(message_to_json(make_error(exc)), event=ERROR)
        finally:
            service.unsubscribe(identity, sub)

    return StreamingResponse(
        spans.ending(span, body()),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _event(msg: message_pb2.Message) -> bytes:
    if msg.content.type == RESET:
        return sse_event(message_to_json(msg), event=RESET)
    return sse_event(message_to_json(msg), event="message", event_id=msg.seq)


async def _last_events(sub: Subscription) -> AsyncIterator[bytes]:
    """The gateway is closing: the events already logged, then ``event: reconnect`` (with
    no ``id:``, so that ``Last-Event-ID`` stays the last event's)."""
    while (msg := await sub.next(0)) is not None:
        yield _event(msg)
    reconnect = message_pb2.Message(role=message_pb2.ROLE_SYSTEM)
    reconnect.content.type = RECONNECT
    reconnect.content.text = RECONNECT_TEXT
    yield sse_event(message_to_json(reconnect), event=RECONNECT)
