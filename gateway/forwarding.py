"""Forward one message to its back-end and stream the replies back.

``Upstreams`` belongs to one client connection (a WebSocket, a gRPC stream, an
HTTP request). It opens one ``BackendStream`` per back-end lazily, retries on
UNAVAILABLE while the back-end has not answered the message yet, and applies
the route's timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import grpc

from dialog.v1 import message_pb2
from gateway import metrics
from gateway.backoff import backoff_delay_s
from gateway.errors import BackendFailed, BackendTimeout, BackendUnavailable, DialogError
from gateway.translate import is_final
from gateway.upstream import BackendPool, BackendStream, StreamFailed

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class _Retry(Exception):
    def __init__(self, failure: StreamFailed):
        self.failure = failure


def _error_for(failure: StreamFailed, backend: str) -> DialogError:
    if failure.code == grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailable(f"back-end {backend!r} is unavailable")
    if failure.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeout(f"back-end {backend!r} timed out")
    return BackendFailed(f"back-end {backend!r} failed: {failure.code.name.lower()}")


class Upstreams:
    """The back-end streams of one client connection."""

    def __init__(self, pool: BackendPool, user: str, *, client: str = "", reply_queue_max: int):
        self._pool = pool
        self._user = user
        self._client = client
        self._reply_queue_max = reply_queue_max
        self._streams: dict[str, BackendStream] = {}

    async def _stream(self, backend: str) -> BackendStream:
        stream = self._streams.get(backend)
        if stream is not None and not stream.alive:
            await stream.aclose()
            stream = None
        if stream is None:
            stream = BackendStream(
                self._pool.channels[backend],
                backend,
                self._user,
                client=self._client,
                reply_queue_max=self._reply_queue_max,
            )
            self._streams[backend] = stream
        return stream

    async def forward(
        self, backend: str, msg: message_pb2.Message
    ) -> AsyncIterator[message_pb2.Message]:
        """Yield the back-end's replies to ``msg`` up to and including the final one."""
        config = self._pool.configs[backend]
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + config.timeout_ms / 1000
        code = "OK"
        try:
            for attempt in range(1, config.retry.max_attempts + 1):
                if attempt > 1:
                    delay = backoff_delay_s(config.retry, attempt - 1, random.random())
                    if asyncio.get_running_loop().time() + delay >= deadline:
                        break
                    await asyncio.sleep(delay)
                try:
                    async for reply in self._attempt(backend, msg, started, deadline):
                        yield reply
                    return
                except _Retry as retry:
                    code = retry.failure.code.name
            raise BackendUnavailable(f"back-end {backend!r} is unavailable")
        except DialogError as exc:
            code = exc.grpc_status if code == "OK" else code
            raise
        finally:
            metrics.BACKEND_SECONDS.labels(backend=backend, code=code).observe(
                time.monotonic() - started
            )

    async def _attempt(
        self, backend: str, msg: message_pb2.Message, started: float, deadline: float
    ) -> AsyncIterator[message_pb2.Message]:
        stream = await self._stream(backend)
        replies = stream.submit(msg)
        answered = False
        try:
            while True:
                reply: message_pb2.Message | StreamFailed
                if replies.empty() and stream.failure is not None:
                    reply = stream.failure
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            reply = await replies.get()
                    except TimeoutError:
                        raise BackendTimeout(
                            f"back-end {backend!r} did not answer in time"
                        ) from None
                if isinstance(reply, StreamFailed):
                    if not answered and reply.code in RETRYABLE:
                        raise _Retry(reply)
                    raise _error_for(reply, backend)
                if not answered:
                    answered = True
                    metrics.FIRST_REPLY_SECONDS.labels(backend=backend).observe(
                        time.monotonic() - started
                    )
                yield reply
                if is_final(reply):
                    return
        finally:
            stream.forget(msg.id)

    async def aclose(self) -> None:
        """Cancel every open back-end call of this connection."""
        streams, self._streams = list(self._streams.values()), {}
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
