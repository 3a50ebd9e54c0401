"""``POST /messages``: one message in; its stored form and final replies out, or an SSE stream.

The request's span is a child of its ``traceparent`` header and lasts until the last
event of a stream; trace labels in the body are removed (``gateway.tracing``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import metrics, spans, tracing
from gateway.auth import Identity
from gateway.errors import DialogError, Internal, InvalidMessage
from gateway.http.body import read_limited
from gateway.http.responses import error_response, json_response
from gateway.http.sse import sse_event
from gateway.messages import Admission
from gateway.service import DialogService
from gateway.translate import (
    DELTA,
    ERROR,
    MAX_ID_CHARS,
    QUEUED,
    Message,
    is_queued,
    make_ack,
    make_error,
    message_to_dict,
    message_to_json,
    parse_message,
)

SURFACE = "http"
ROUTE = "/messages"
EVENT_STREAM = "text/event-stream"
IDEMPOTENCY_HEADER = "idempotency-key"
REPLAY_HEADER = "Idempotent-Replayed"


async def post_message(request: Request) -> Response:
    service: DialogService = request.app.state.service
    started, code = time.monotonic(), 200
    span = spans.http_server_span(service.tracer, request.scope, ROUTE)
    token, streaming = tracing.attach(span), False
    try:
        identity = await service.access.authenticate(
            request.headers.getlist("authorization"), SURFACE
        )
        if request.headers.get("content-type", "").split(";")[0].strip() not in (
            "",
            "application/json",
        ):
            raise InvalidMessage("Content-Type must be application/json")
        config = service.config
        body = await read_limited(request, config.max_message_bytes, config.body_timeout_ms / 1000)
        msg = parse_message(body, config.max_message_bytes, config.json_max_depth)
        tracing.take_from_labels(msg)  # the headers carry this request's trace context
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if len(key) > MAX_ID_CHARS:
            raise InvalidMessage(f"Idempotency-Key is longer than {MAX_ID_CHARS} characters")
        if key and not msg.id:
            msg.id = key
        admission = await service.messages.admit(identity, msg, SURFACE)
        headers = {REPLAY_HEADER: "true"} if admission.replay is not None else {}
        if EVENT_STREAM in request.headers.get("accept", ""):
            streaming = True
            return StreamingResponse(
                spans.ending(span, _stream(service, identity, admission)),
                media_type=EVENT_STREAM,
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", **headers},
            )
        replies = await _collect(service, identity, admission)
        answer: dict[str, object] = {
            "message": message_to_dict(admission.stored),
            "replies": [message_to_dict(r) for r in replies],
        }
        if len(replies) == 1 and is_queued(replies[0]):
            # Kept for later delivery: the replies will reach the user's event stream.
            code, answer["status"] = 202, QUEUED
        return json_response(answer, status=code, headers=headers)
    except DialogError as exc:
        code = exc.http_status
        return error_response(exc)
    except Exception:
        code = Internal.http_status  # answered and logged by the app's exception handler
        raise
    finally:
        metrics.REQUEST_SECONDS.labels(
            surface=SURFACE, method="POST /messages", code=str(code)
        ).observe(time.monotonic() - started, exemplar=tracing.exemplar(span))
        tracing.detach(token)
        if not streaming:
            spans.end_http(span, code)


async def _collect(
    service: DialogService, identity: Identity, admission: Admission
) -> list[Message]:
    """The final reply and the events; deltas are left out of the JSON answer."""
    async with service.request_upstreams(identity) as upstreams:
        return [
            reply
            async for reply in service.messages.replies(upstreams, identity, admission)
            if reply.content.type != DELTA
        ]


async def _stream(
    service: DialogService, identity: Identity, admission: Admission
) -> AsyncGenerator[bytes, None]:
    """Ack, then every reply as it comes; an error after the start is an in-band event."""
    msg = admission.stored
    ack = make_ack(msg, replay=admission.replay is not None)
    yield sse_event(message_to_json(ack), event="ack", event_id=msg.seq)
    try:
        async with service.request_upstreams(identity) as upstreams:
            async for reply in service.messages.replies(upstreams, identity, admission):
                if is_queued(reply):
                    yield sse_event(message_to_json(reply), event="ack", event_id=reply.seq)
                else:
                    yield sse_event(message_to_json(reply), event="message", event_id=reply.seq)
    except DialogError as exc:
        yield sse_event(message_to_json(make_error(exc, msg.id)), event=ERROR)
