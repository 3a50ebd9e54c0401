"""uvicorn's httptools protocol with limits and checks on the request head.

httptools parses the request; this subclass only counts what it is fed:
- a head (request line and headers) over ``max_head_bytes`` is answered with
  431 before any body is read (RFC 6585, section 5);
- a head that does not arrive within ``head_timeout_s`` (a slowloris, also on a
  WebSocket handshake) is answered with 408 and the connection closed;
- a request without exactly one ``Host`` header is answered with 400
  (RFC 9112, section 3.2).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import DialogError, InvalidMessage, RequestHeadTooLarge, RequestTimeout


class _HeadRejected(Exception):
    """Stops the parser after the answer was written."""


def _answer(error: DialogError) -> bytes:
    body = json.dumps(error.to_json(), separators=(",", ":")).encode()
    reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (error.http_status, reason[error.http_status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a size and a time limit on each request head."""

    max_head_bytes = 16384
    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._hosts = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._rejected = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._hosts = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if name.lower() == b"host":
            self._hosts += 1
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        if self._hosts != 1:
            self._reject(InvalidMessage("a request needs exactly one Host header"))
            raise _HeadRejected
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._rejected:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._reject(
                RequestHeadTooLarge(f"the request head is over {self.max_head_bytes} bytes")
            )
            raise _HeadRejected

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self._reject(RequestTimeout("the request head did not arrive in time"))

    def _reject(self, error: DialogError) -> None:
        if self._rejected or self.transport.is_closing():
            return
        self._rejected = True
        self.transport.write(_answer(error))
        self.transport.close()


def guarded_protocol(max_head_bytes: int, head_timeout_s: float) -> type[HttpToolsProtocol]:
    """A protocol class with the given limits, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )
