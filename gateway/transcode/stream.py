"""The two forms of a server stream over HTTP (pure): server-sent events and JSON lines.

With ``Accept: text/event-stream``, each response is an ``event: message`` whose data is its
JSON, and an error that ends the stream is an ``event: error`` whose data is the one JSON
error (``gateway.transcode.response``); heartbeats are comments. Otherwise the stream is
JSON lines (``application/x-ndjson``): one ``{"result": <response>}`` per line, and an error
that ends it is a last ``{"error": …}`` line.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.http.sse import HEARTBEAT, sse_event

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def stream_type(accept: str) -> str:
    """The media type of a stream for a request's ``Accept`` header."""
    return SSE if SSE in accept else NDJSON


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def message_frame(data: Any, media_type: str) -> bytes:
    """One response of the stream."""
    if media_type == SSE:
        return sse_event(_json(data), event="message")
    return _json({"result": data}).encode() + b"\n"


def error_frame(error: dict[str, Any], media_type: str) -> bytes:
    """The error that ends the stream."""
    if media_type == SSE:
        return sse_event(_json(error), event="error")
    return _json(error).encode() + b"\n"


def heartbeat(media_type: str) -> bytes | None:
    """What keeps an idle stream open, when its form has one."""
    return HEARTBEAT if media_type == SSE else None
