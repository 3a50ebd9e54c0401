"""``GET /events/stream``: every message delivered to the caller, as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import DialogError
from gateway.http.responses import error_response
from gateway.http.sse import HEARTBEAT, last_event_id, sse_event
from gateway.service import DialogService
from gateway.translate import ERROR, make_error, message_to_json

SURFACE = "http"


async def event_stream(request: Request) -> Response:
    service: DialogService = request.app.state.service
    try:
        identity = await service.authenticate(request.headers.get("authorization"), SURFACE)
    except DialogError as exc:
        return error_response(exc)
    after = last_event_id(request.headers.get("last-event-id"))
    sub, _complete = service.hub.subscribe(identity.subject, after)
    heartbeat_s = service.config.sse_heartbeat_ms / 1000

    async def body() -> AsyncIterator[bytes]:
        try:
            yield HEARTBEAT
            while True:
                msg = await sub.next(heartbeat_s)
                if msg is None:
                    yield HEARTBEAT
                else:
                    yield sse_event(message_to_json(msg), event="message", event_id=msg.seq)
        except DialogError as exc:
            yield sse_event(message_to_json(make_error(exc)), event=ERROR)
        finally:
            service.hub.unsubscribe(identity.subject, sub)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
