"""Read a request body without ever holding more than the size limit."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from gateway.errors import InvalidMessage, MessageTooLarge, RequestTimeout


async def read_limited(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body within ``timeout_s``, or ``MessageTooLarge`` as soon as it passes
    ``max_bytes``; a client that sends too slowly gets ``RequestTimeout``, a body that ends
    early ``InvalidMessage``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(request, max_bytes)
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None


async def _read(request: Request, max_bytes: int) -> bytes:
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
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise MessageTooLarge(f"body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went away, or the server refused its framing (a malformed chunk):
        # a truncated body, not a server failure.
        raise InvalidMessage("the request body ended early") from None
    return b"".join(chunks)
