"""HTTP answers for the gateway's errors and messages (the one HTTP error mapping)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from gateway.errors import DialogError

JSON_TYPE = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return Response(text, status_code=status, media_type=JSON_TYPE, headers=headers)


def error_response(error: DialogError) -> Response:
    """``{"error": {"code", "message"}}`` with the error's HTTP status."""
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s + 0.499)))
    if error.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="dialog-gateway"'
    return json_response(error.to_json(), error.http_status, headers)
