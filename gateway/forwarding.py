"""Forward one message to its back-end and stream the replies back.

``Upstreams`` belongs to one client connection (a WebSocket, a gRPC stream), or to
one user's requests (``SharedUpstreams``). It opens one ``BackendStream`` per
back-end lazily and applies the route's timeout, which the back-end is told as
the time left. Every
attempt asks the back-end's circuit breaker first (an open breaker refuses at
once, without touching the network) and reports its outcome back. While the
back-end has not answered the message yet, an UNAVAILABLE attempt is retried,
if the back-end's retry budget allows it. Each attempt has its span, whose trace
context the back-end receives with the message (``gateway.tracing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from opentelemetry.context import Context

from dialog.v1 import message_pb2
from gateway import metrics, spans, tracing
from gateway.backend_stream import BackendStream, Reply, StreamFailed
from gateway.backoff import backoff_delay_s
from gateway.breaker import Outcome
from gateway.config import BackendConfig
from gateway.errors import BackendFailed, BackendTimeout, BackendUnavailable, DialogError
from gateway.translate import is_final
from gateway.upstream import BackendPool

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


def _outcome_of(failure: StreamFailed) -> Outcome:
    """A stream the gateway cancelled itself (its client went away) says nothing of the
    back-end; any other end before the final reply is the back-end's failure."""
    return Outcome.ABANDONED if failure.code == grpc.StatusCode.CANCELLED else Outcome.FAILED


class Upstreams:
    """The back-end streams of one client connection."""

    def __init__(self, pool: BackendPool, user: str, *, client: str = "", reply_queue_max: int):
        self._pool = pool
        self._user = user
        self._client = client
        self._reply_queue_max = reply_queue_max
        self._streams: dict[str, BackendStream] = {}
        self._retired: list[BackendStream] = []  # on a channel a reload replaced

    async def _stream(self, backend: str) -> BackendStream:
        stream = self._streams.get(backend)
        if stream is not None and not stream.alive:
            await stream.aclose()
            stream = None
        if stream is not None and not self._pool.stream_is_current(stream):
            # A reload replaced the channel: messages in flight finish on the old stream.
            self._retired.append(stream)
            stream = None
        for old in [s for s in self._retired if s.idle or not s.alive]:
            self._retired.remove(old)
            await old.aclose()
        if stream is None:
            stream = self._pool.open_stream(
                backend, self._user, client=self._client, reply_queue_max=self._reply_queue_max
            )
            self._streams[backend] = stream
        return stream

    async def forward(
        self, backend: str, msg: message_pb2.Message, *, trace_parent: Context | None = None
    ) -> AsyncIterator[message_pb2.Message]:
        """Yield the back-end's replies to ``msg`` up to and including the final one.

        Raises ``BackendUnavailable`` before any reply when the back-end cannot be
        reached: its circuit breaker is open, or every attempt the retry policy,
        the timeout and the retry budget allowed failed with UNAVAILABLE. The span of
        each attempt is a child of ``trace_parent`` (by default the current context).
        """
        parent = trace_parent if trace_parent is not None else tracing.current_context()
        config = self._pool.config(backend)
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + config.timeout_ms / 1000
        code = "OK"
        self._pool.record_request(backend)
        try:
            for attempt in range(1, config.retry.max_attempts + 1):
                if attempt > 1 and not await self._wait_to_retry(config, attempt, deadline):
                    break
                try:
                    attempted = self._attempt(backend, msg, started, deadline, attempt, parent)
                    async for reply in attempted:
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
                time.monotonic() - started, exemplar=tracing.exemplar_of(parent)
            )

    async def _wait_to_retry(self, config: BackendConfig, attempt: int, deadline: float) -> bool:
        """Sleep the back-off before retry ``attempt``; False when the retry must not be
        made: it would start past the deadline, or the retry budget refuses it."""
        delay = backoff_delay_s(config.retry, attempt - 1, random.random())
        if asyncio.get_running_loop().time() + delay >= deadline:
            return False
        if not self._pool.allow_retry(config.name):
            return False
        await asyncio.sleep(delay)
        return True

    async def _attempt(
        self,
        backend: str,
        msg: message_pb2.Message,
        started: float,
        deadline: float,
        attempt: int,
        parent: Context,
    ) -> AsyncIterator[message_pb2.Message]:
        target = self._pool.config(backend).target
        span = spans.backend_span(self._pool.tracer, backend, target, msg.id, attempt, parent)
        status = "UNAVAILABLE"  # refused by the breaker, before any network
        try:
            permit = self._pool.admit(backend)
        except BaseException:
            spans.end_rpc(span, status, client=True)
            raise
        outcome = Outcome.ABANDONED
        status = "UNKNOWN"
        stream: BackendStream | None = None
        answered = False
        try:
            stream = await self._stream(backend)
            replies = stream.submit(msg, deadline, tracing.carrier(span))
            while True:
                try:
                    reply = await self._next(stream, replies, deadline, backend)
                except BackendTimeout:
                    outcome, status = Outcome.FAILED, "DEADLINE_EXCEEDED"
                    raise
                if isinstance(reply, StreamFailed):
                    outcome, status = _outcome_of(reply), reply.code.name
                    removed = self._pool.removal(backend)
                    if removed is not None:
                        raise removed
                    if not answered and reply.code in RETRYABLE:
                        raise _Retry(reply)
                    raise _error_for(reply, backend)
                if not answered:
                    answered = True
                    metrics.FIRST_REPLY_SECONDS.labels(backend=backend).observe(
                        time.monotonic() - started, exemplar=tracing.exemplar(span)
                    )
                if is_final(reply):
                    # Settled before the yield: the caller may stop at the final reply.
                    outcome, status = Outcome.SUCCEEDED, "OK"
                    spans.end_rpc(span, status, client=True)
                    yield reply
                    return
                yield reply
        except (GeneratorExit, asyncio.CancelledError):
            if status != "OK":
                status = "CANCELLED"  # the caller stopped waiting
            raise
        except DialogError as exc:
            status = exc.grpc_status if status == "UNKNOWN" else status
            raise
        finally:
            if stream is not None:
                stream.forget(msg.id)
            self._pool.settle(backend, permit, outcome)
            if status != "OK":
                spans.end_rpc(span, status, client=True)

    @staticmethod
    async def _next(
        stream: BackendStream, replies: asyncio.Queue[Reply], deadline: float, backend: str
    ) -> Reply:
        """The next reply or failure for one message; ``BackendTimeout`` at the deadline."""
        if not replies.empty():
            return replies.get_nowait()  # replies often arrive together: no timer to set
        if stream.failure is not None:
            return stream.failure
        try:
            async with asyncio.timeout_at(deadline):
                return await replies.get()
        except TimeoutError:
            raise BackendTimeout(f"back-end {backend!r} did not answer in time") from None

    async def aclose(self) -> None:
        """Cancel every open back-end call of this connection."""
        streams, self._streams = [*self._streams.values(), *self._retired], {}
        self._retired = []
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


@dataclass
class _Kept:
    upstreams: Upstreams
    users: int = 0
    leased_at: float = 0.0  # the last lease's start: ``_kept`` is in this order
    idle_since: float = 0.0


class SharedUpstreams:
    """Back-end streams kept per user (and client certificate) between the requests of
    the request/response surfaces (``POST /messages``, ``Gateway.Send``), so that a
    request does not open and close a back-end stream of its own.

    At most ``max_users`` users' streams are kept while idle; the least recently used
    idle ones are closed first, and any idle for ``idle_s``. Streams in use are never
    closed: the bound then waits for them to be given back.
    """

    def __init__(
        self,
        factory: Callable[[str, str], Upstreams],
        *,
        max_users: int,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._factory = factory
        self._max_users = max_users
        self._idle_s = idle_s
        self._clock = clock
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()

    @contextlib.asynccontextmanager
    async def lease(self, user: str, client: str = "") -> AsyncIterator[Upstreams]:
        """The user's streams, for one request."""
        key = (user, client)
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = _Kept(self._factory(user, client))
        self._kept.move_to_end(key)
        kept.users += 1
        kept.leased_at = self._clock()
        try:
            yield kept.upstreams
        finally:
            kept.users -= 1
            kept.idle_since = self._clock()
            await self._trim()

    def __len__(self) -> int:
        return len(self._kept)

    async def _trim(self) -> None:
        """Close idle streams over the bound (oldest first) and those idle too long."""
        now = self._clock()
        excess = len(self._kept) - self._max_users
        expired: list[tuple[str, str]] = []
        for key, kept in self._kept.items():
            if excess <= 0 and now - kept.leased_at < self._idle_s:
                break  # this one and every later one were leased within idle_s
            if not kept.users and (excess > 0 or now - kept.idle_since >= self._idle_s):
                expired.append(key)
                excess -= 1
        closing = [self._kept.pop(key).upstreams for key in expired]
        await asyncio.gather(*(u.aclose() for u in closing), return_exceptions=True)

    async def aclose(self) -> None:
        kept, self._kept = list(self._kept.values()), OrderedDict()
        await asyncio.gather(*(k.upstreams.aclose() for k in kept), return_exceptions=True)
