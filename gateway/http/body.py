"""Read a request body without ever holding more than the size limit."""

from __future__ import annotations

from starlette.requests import Request

from gateway.errors import InvalidMessage, MessageTooLarge


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The whole body, or ``MessageTooLarge`` as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidMessage("invalid Content-Length") from None
        if size > max_bytes:
            raise MessageTooLarge(f"body is {size} bytes; the limit is {max_bytes}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise MessageTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
