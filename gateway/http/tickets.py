"""``POST /ws-ticket``: a single-use, short-lived ticket for ``/ws?ticket=`` and
``/events/stream?ticket=``, for browsers that cannot set an ``Authorization``
header on a WebSocket or an ``EventSource``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import DialogError
from gateway.http.responses import error_response, json_response
from gateway.service import DialogService

SURFACE = "http"


async def post_ws_ticket(request: Request) -> Response:
    service: DialogService = request.app.state.service
    try:
        service.access.check_origin(request.headers.get("origin"))
        identity = await service.access.authenticate(
            request.headers.getlist("authorization"), SURFACE
        )
        ticket, ttl_s = await service.access.issue_ticket(identity)
    except DialogError as exc:
        return error_response(exc)
    return json_response({"ticket": ticket, "expires_in_s": round(ttl_s, 3)})
