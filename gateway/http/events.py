"""``GET /events/stream``: every message delivered to the caller, as server-sent events.

Authentication is the ``Authorization`` header or, for ``EventSource`` in a
browser, a single-use ``?ticket=``. The stream ends when the token expires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.auth import Identity
from gateway.errors import DialogError, Unauthenticated
from gateway.http.responses import error_response
from gateway.http.sse import HEARTBEAT, last_event_id, sse_event
from gateway.service import DialogService
from gateway.translate import ERROR, RESET, make_error, make_reset, message_to_json

SURFACE = "http"


async def _identity(request: Request, service: DialogService) -> Identity:
    service.check_origin(request.headers.get("origin"))
    ticket = request.query_params.get("ticket")
    if ticket is not None and "authorization" not in request.headers:
        return service.redeem_ticket(ticket, SURFACE)
    return await service.authenticate(request.headers.getlist("authorization"), SURFACE)


async def event_stream(request: Request) -> Response:
    service: DialogService = request.app.state.service
    try:
        identity = await _identity(request, service)
    except DialogError as exc:
        return error_response(exc)
    after = last_event_id(request.headers.get("last-event-id"))
    sub, complete = service.hub.subscribe(identity.subject, after)
    heartbeat_s = service.config.sse_heartbeat_ms / 1000

    async def body() -> AsyncIterator[bytes]:
        try:
            yield HEARTBEAT
            if not complete:
                reset = make_reset(service.hub.last_seq(identity.subject))
                yield sse_event(message_to_json(reset), event=RESET)
            while (remaining_s := service.remaining_s(identity)) > 0:
                msg = await sub.next(min(heartbeat_s, remaining_s))
                if msg is None:
                    yield HEARTBEAT
                elif service.remaining_s(identity) > 0:
                    yield sse_event(message_to_json(msg), event="message", event_id=msg.seq)
            raise Unauthenticated("token expired")
        except DialogError as exc:
            yield sse_event(message_to_json(make_error(exc)), event=ERROR)
        finally:
            service.hub.unsubscribe(identity.subject, sub)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
