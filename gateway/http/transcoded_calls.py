"""The back-end calls of transcoded methods (``gateway.http.transcoding``): the asyncio shell.

One call over the back-end's mutual-TLS channel, with the request message as bytes, under the
back-end's circuit breaker (``BackendPool.admit``/``settle``, with the proxy's outcomes). A
unary call's deadline is the back-end's ``timeout_ms``, and it is work in flight for the
drain. A server stream has no deadline; its status is answered once the back-end has sent its
response headers (or has been silent for ``timeout_ms``), then its messages as events or JSON
lines (``gateway.transcode.stream``), until the back-end ends it, the client goes away (the
back-end call is cancelled), the token expires or the drain closes: an error after the
status is an in-band error event or line, never a silent end.

Each call holds its ``InflightSlot`` (``MAX_INFLIGHT``) until it ends: a unary call until
its answer, a stream until its response ends, however it ends (``HeldStream``).

The back-end's response headers and trailers that its metadata allowlist names are passed on
as ``Grpc-Metadata-*`` and ``Grpc-Trailer-*`` headers (``gateway.transcode.metadata``), on an
answer and on an error alike; a stream's headers go on its HTTP response, and its trailers,
which come after the HTTP headers are sent, are not passed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry.trace import Span
from starlette.responses import ContentStream, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway import spans
from gateway.auth import Identity
from gateway.breaker import Outcome
from gateway.errors import DialogError, Draining, Internal
from gateway.grpc.expiry import one_answer, until_expiry
from gateway.grpc.proxy import (
    BreakerReport,
    Metadata,
    allowed_metadata,
    call_outcome,
    outgoing_timeout_s,
)
from gateway.http.responses import json_response
from gateway.lifecycle import REFUSED, Phase
from gateway.service import DialogService, InflightSlot
from gateway.transcode.metadata import response_metadata
from gateway.transcode.response import decode_response, error_json, message_json, status_json
from gateway.transcode.stream import error_frame, heartbeat, message_frame
from gateway.transcode.table import Endpoint, TranscodingTable

log = logging.getLogger(__name__)

STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# Written by gRPC itself when the back-end cannot be reached or is too slow: its text
# names internal addresses, so the gateway's own message replaces it.
OWN_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the back-end is unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the back-end did not answer in time",
}
_END = object()  # the end of an iteration, as a task's result


async def call_unary(
    service: DialogService,
    table: TranscodingTable,
    endpoint: Endpoint,
    message: Message,
    metadata: Metadata,
    identity: Identity,
) -> Response:
    """Call a unary method; its JSON answer, or its status as the one JSON error."""
    pool, name = service.pool, endpoint.backend
    breaker = BreakerReport(pool, name)
    # No (de)serializers: the message goes as bytes.
    call = pool.channels[name].unary_unary(endpoint.grpc_path, None, None)(
        message.SerializeToString(),
        timeout=outgoing_timeout_s(None, endpoint.kind, pool.configs[name]),
        metadata=metadata,
    )
    deadline = asyncio.get_running_loop().time() + service.access.remaining_s(identity)
    allowed = allowed_metadata(pool.configs[name])
    try:
        raw = await one_answer(call, service.drain, deadline)
        breaker.settle(Outcome.SUCCEEDED)
        passed = _passed(await call.initial_metadata(), await call.trailing_metadata(), allowed)
    except grpc.aio.AioRpcError as exc:
        breaker.settle(call_outcome(exc.code(), client_deadline=False))
        headers, trailers = exc.initial_metadata(), exc.trailing_metadata()
        response = _status_response(exc.code(), exc.details(), trailers, table)
        return _with_headers(response, _passed(headers, trailers, allowed))
    finally:
        call.cancel()
        breaker.settle(Outcome.ABANDONED)  # unless settled before
    answered = decode_response(raw, endpoint.response_type)
    response = json_response(message_json(answered, endpoint.response_body, table.pool))
    return _with_headers(response, passed)


def _passed(headers: Any, trailers: Any, allowed: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """The ``Grpc-Metadata-*`` and ``Grpc-Trailer-*`` headers of a call's metadata."""
    passed = response_metadata(tuple(headers or ()), tuple(trailers or ()), allowed)
    if passed.dropped:
        log.debug("%d metadata entries of a back-end's answer were not passed on", passed.dropped)
    return passed.headers


def _with_headers(response: Response, headers: tuple[tuple[str, str], ...]) -> Response:
    """``response`` with ``headers`` added (a name may repeat: one header per value)."""
    response.raw_headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    return response


def _status(
    code: grpc.StatusCode, details: str | None, trailers: Any, table: TranscodingTable
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The HTTP status, JSON error and headers of a back-end call's status."""
    pairs = tuple(trailers or ())
    status, body = status_json(code.name, OWN_MESSAGES.get(code, details or ""), pairs, table.pool)
    headers = {}
    retry_after = next((str(v) for k, v in pairs if k == "retry-after"), "")
    if retry_after.isdigit():
        headers["Retry-After"] = retry_after
    return status, body, headers


def _status_response(
    code: grpc.StatusCode, details: str | None, trailers: Any, table: TranscodingTable
) -> Response:
    status, body, headers = _status(code, details, trailers, table)
    return json_response(body, status, headers)


class HeldStream(StreamingResponse):
    """A stream's response that ends its call (``end``: idempotent) however the response
    ends, even when its body was never read (the client went away before)."""

    def __init__(self, content: ContentStream, end: Callable[[], None], media_type: str) -> None:
        super().__init__(content, media_type=media_type, headers=STREAM_HEADERS)
        self._end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._end()


async def call_stream(
    media_type: str,
    service: DialogService,
    table: TranscodingTable,
    endpoint: Endpoint,
    message: Message,
    metadata: Metadata,
    identity: Identity,
    span: Span,
    slot: InflightSlot,
) -> Response:
    """Open the stream; answer its status once the back-end has sent its headers (or was
    silent for ``timeout_ms``), then its messages as events or JSON lines. ``slot`` is
    given back when the stream ends."""
    pool, name = service.pool, endpoint.backend
    try:
        allowed = allowed_metadata(pool.configs[name])
        breaker = BreakerReport(pool, name)
    except BaseException:
        slot.release()
        raise
    call = pool.channels[name].unary_stream(endpoint.grpc_path, None, None)(
        message.SerializeToString(),
        timeout=outgoing_timeout_s(None, endpoint.kind, pool.configs[name]),
        metadata=metadata,
    )
    headers = asyncio.create_task(call.initial_metadata(), name=f"headers {endpoint.grpc_path}")

    def end() -> None:
        """End the call and give its place back (once: later calls do nothing)."""
        headers.cancel()
        call.cancel()
        breaker.settle(Outcome.ABANDONED)  # unless settled before
        slot.release()

    try:
        await asyncio.wait({headers}, timeout=pool.configs[name].timeout_ms / 1000)
        if call.done() and (code := await call.code()) is not grpc.StatusCode.OK:
            breaker.settle(call_outcome(code, client_deadline=False))
            trailers = await call.trailing_metadata()
            response = _status_response(code, await call.details(), trailers, table)
            end()
            return _with_headers(response, _passed(_headers_of(headers), trailers, allowed))
    except BaseException:
        end()
        raise
    frames = _frames(service, table, endpoint, call, headers, breaker, identity, media_type, end)
    response = HeldStream(spans.ending(span, frames), end, media_type)
    # A stream's trailers come after its HTTP headers: only its headers are passed on.
    return _with_headers(response, _passed(_headers_of(headers), (), allowed))


def _headers_of(headers: asyncio.Task[Any]) -> Any:
    """The back-end's response headers, when they have come."""
    if headers.done() and not headers.cancelled() and headers.exception() is None:
        return headers.result()
    return ()


async def _frames(
    service: DialogService,
    table: TranscodingTable,
    endpoint: Endpoint,
    call: Any,
    headers: asyncio.Task[Any],
    breaker: BreakerReport,
    identity: Identity,
    media_type: str,
    end: Callable[[], None],
) -> AsyncGenerator[bytes, None]:
    """The stream's messages, then its error, if it ends with one, in-band."""
    try:
        await headers
        if not call.done() or await call.code() is grpc.StatusCode.OK:
            breaker.settle(Outcome.SUCCEEDED)  # the back-end answered
        deadline = asyncio.get_running_loop().time() + service.access.remaining_s(identity)
        messages = service.drain.until(Phase.CLOSING, until_expiry(_reads(call), deadline))
        idle = heartbeat(media_type)
        heartbeat_s = service.config.sse_heartbeat_ms / 1000 if idle is not None else None
        async for raw in _with_heartbeats(messages, heartbeat_s):
            if raw is None:  # only with a heartbeat_s, so only when there is a heartbeat
                yield idle or b""
                continue
            answered = decode_response(raw, endpoint.response_type)
            data = message_json(answered, endpoint.response_body, table.pool)
            yield message_frame(data, media_type)
        # The messages end early only when the drain closes (the wait for the next one,
        # cancelled, cancels the back-end call).
        if service.drain.phase is Phase.CLOSING and (not call.done() or call.cancelled()):
            raise Draining(REFUSED)
        code = await call.code()
        breaker.settle(call_outcome(code, client_deadline=False))
        if code is not grpc.StatusCode.OK:
            trailers = await call.trailing_metadata()
            error = _status(code, await call.details(), trailers, table)[1]
            yield error_frame(error, media_type)
    except grpc.aio.AioRpcError as exc:
        breaker.settle(call_outcome(exc.code(), client_deadline=False))
        error = _status(exc.code(), exc.details(), exc.trailing_metadata(), table)[1]
        yield error_frame(error, media_type)
    except DialogError as exc:
        yield error_frame(error_json(exc), media_type)
    except Exception:
        log.exception("the stream of %s failed", endpoint.grpc_path)
        yield error_frame(error_json(Internal()), media_type)
    finally:
        end()


async def _reads(call: Any) -> AsyncIterator[bytes]:
    async for raw in call:
        yield raw


async def _with_heartbeats(
    items: AsyncIterator[bytes], interval_s: float | None
) -> AsyncIterator[bytes | None]:
    """``items``, and ``None`` after each ``interval_s`` without one (never, when None).
    The next item is awaited in a task of its own, so that a heartbeat does not cancel
    the wait."""
    if interval_s is None:
        async for each in items:
            yield each
        return
    pending: asyncio.Task[object] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(items), name="transcoded stream: next")
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            result, pending = pending.result(), None
            if not isinstance(result, bytes):
                return  # _END
            yield result
    finally:
        if pending is not None:
            pending.cancel()


async def _next(items: AsyncIterator[bytes]) -> object:
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _END
