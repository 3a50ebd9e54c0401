"""The Backend servicer every adapter extends (asyncio shell).

``ConverseServicer.Converse`` owns one call: a TaskGroup with one writer task
and one task per request message. Subclasses implement ``handle`` and yield
replies; this class enforces the reply contract of backend.proto, answers a
repeated request id with the final reply it already got (delivery is at least
once), bounds concurrency and the outbound queue, and puts a deadline on
every handler and every write. A handler also stops at the time the gateway
gives its message (``ConverseRequest.timeouts``): it is cancelled and the
message is answered ``deadline exceeded``, and not remembered, so that a later
redelivery of the same id runs again. Each message is handled inside its span, a child
of the trace context the gateway put in its labels (``adapters.tracing``).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias, cast

import grpc
from opentelemetry import trace
from opentelemetry.trace import Tracer

from adapters import tracing
from adapters.dedup import RecentRequests, Seen
from adapters.envelope import (
    DEADLINE_TEXT,
    INTERNAL_ERROR_TEXT,
    RESPONSE_OVERHEAD_BYTES,
    TIMEOUT_TEXT,
    USER_METADATA_KEY,
    Message,
    error_reply,
    fit_reply,
    is_final,
    stamp,
    time_left_s,
    user_from_metadata,
)
from dialog.backend.v1 import backend_pb2

ConverseRequest = backend_pb2.ConverseRequest
ConverseResponse = backend_pb2.ConverseResponse
ConverseContext: TypeAlias = "grpc.aio.ServicerContext[ConverseRequest, ConverseResponse]"
Outbox: TypeAlias = "asyncio.Queue[Message | None]"

logger = logging.getLogger(__name__)

IN_PROGRESS_TEXT = "request still in progress"
STALLED_TEXT = "client stopped reading replies"


@dataclass(frozen=True)
class ConverseLimits:
    """Bounds of one Converse call. Units are in the names."""

    max_message_bytes: int = 1024 * 1024
    max_concurrency: int = 64
    outbox_size: int = 256
    max_batch: int = 64
    handle_timeout_s: float = 120.0
    write_timeout_s: float = 30.0


class _ClientStalled(Exception):
    """The client did not take a reply within the write deadline."""


class ConverseServicer(abc.ABC):
    """Base of every adapter's ``dialog.backend.v1.Backend`` servicer."""

    def __init__(
        self,
        limits: ConverseLimits | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.limits = limits or ConverseLimits()
        self._clock_ns = clock_ns
        self._new_id = new_id
        self._recent: RecentRequests[Message] = RecentRequests(lambda m: m.ByteSize())
        # Wakes duplicates waiting for the first delivery of the same id.
        self._in_flight: dict[tuple[str, str], asyncio.Event] = {}
        # The process's tracer provider, unless a test gives its own.
        self.tracer: Tracer = trace.get_tracer("adapters")

    @abc.abstractmethod
    def handle(self, msg: Message, user: str) -> AsyncIterator[Message]:
        """Yield the replies to ``msg``: deltas and events, then one final reply.

        Replies need no id, timestamp or ``reply_to``: the base stamps them. Any
        reply yielded after the final one is never read. An exception becomes
        a final ``error`` reply with the text "internal error".
        """

    async def Converse(
        self, request_iterator: AsyncIterator[ConverseRequest], context: ConverseContext
    ) -> None:
        """Answer every message of every request batch on this stream."""
        # At run time grpc.aio hands over (key, value) pairs, whatever the stubs say.
        metadata = cast("Iterable[tuple[str, str | bytes]] | None", context.invocation_metadata())
        user = user_from_metadata(metadata)
        if user is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"missing {USER_METADATA_KEY} metadata"
            )
            return
        outbox: Outbox = asyncio.Queue(self.limits.outbox_size)
        stalled = False
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._write_replies(outbox, context), name="converse-writer")
                await self._read_requests(request_iterator, user, outbox)
                await outbox.put(None)
        except* _ClientStalled:
            stalled = True
        if stalled:
            # The status reaches the client once it drains what flow control holds.
            logger.warning(STALLED_TEXT)
            await context.abort(grpc.StatusCode.UNAVAILABLE, STALLED_TEXT)

    async def _read_requests(
        self, request_iterator: AsyncIterator[ConverseRequest], user: str, outbox: Outbox
    ) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.limits.max_concurrency)
        async with asyncio.TaskGroup() as handlers:
            async for request in request_iterator:
                received = loop.time()
                for msg in request.messages:
                    left = time_left_s(request.timeouts, msg.id)
                    deadline = None if left is None else received + left
                    await slots.acquire()
                    handlers.create_task(
                        self._answer_in_slot(msg, user, outbox, slots, deadline),
                        name="converse-handle",
                    )

    async def _answer_in_slot(
        self,
        msg: Message,
        user: str,
        outbox: Outbox,
        slots: asyncio.Semaphore,
        deadline: float | None,
    ) -> None:
        span = tracing.message_span(self.tracer, msg)
        try:
            with trace.use_span(
                span, end_on_exit=True, record_exception=False, set_status_on_exception=False
            ):
                await self._answer(msg, user, outbox, deadline)
        finally:
            slots.release()

    async def _answer(
        self, msg: Message, user: str, outbox: Outbox, deadline: float | None = None
    ) -> None:
        """Answer ``msg`` once per id; ``deadline`` (event-loop time) is the gateway's."""
        if not msg.id:
            await self._apply(msg, user, outbox, deadline)
            return
        key = (user, msg.id)
        decision = self._recent.begin(user, msg.id)
        while decision.seen is Seen.IN_PROGRESS:
            # A redelivery while the first delivery is still being answered:
            # wait for that one to finish (or be abandoned), then decide again.
            done = self._in_flight.get(key)
            if done is None:
                self._recent.abandon(user, msg.id)  # no live delivery behind the mark
            elif not await self._wait(done):
                await self._send(outbox, self._stamp(error_reply(IN_PROGRESS_TEXT), msg))
                return
            decision = self._recent.begin(user, msg.id)
        if decision.final is not None:
            await self._send(outbox, decision.final)
            return
        self._in_flight.setdefault(key, asyncio.Event())
        final: Message | None = None
        try:
            final = await self._apply(msg, user, outbox, deadline)
        finally:
            if final is None:
                self._recent.abandon(user, msg.id)
            else:
                self._recent.finish(user, msg.id, final)
            done = self._in_flight.pop(key, None)
            if done is not None:
                done.set()

    async def _wait(self, done: asyncio.Event) -> bool:
        """Wait until a delivery in flight ends; False on timeout."""
        try:
            async with asyncio.timeout(self.limits.handle_timeout_s):
                await done.wait()
        except TimeoutError:
            return False
        return True

    async def _apply(
        self, msg: Message, user: str, outbox: Outbox, deadline: float | None = None
    ) -> Message | None:
        """Run the handler and send its replies; returns the final reply sent, or None
        when the gateway's deadline cut it short (that answer is not to be remembered)."""
        now = asyncio.get_running_loop().time()
        limit = now + self.limits.handle_timeout_s
        gateway_gives_up_first = deadline is not None and deadline <= limit
        if deadline is not None and gateway_gives_up_first:
            limit = deadline
        final: Message | None = None
        try:
            if limit <= now:
                raise TimeoutError  # the gateway has given up already: do not start
            async with asyncio.timeout_at(limit):
                final = await self._relay(msg, user, outbox)
        except TimeoutError:
            if gateway_gives_up_first:
                tracing.failed("deadline_exceeded")
                logger.info("deadline exceeded", extra={"request_id": msg.id})
                await self._send(outbox, self._stamp(error_reply(DEADLINE_TEXT), msg))
                return None
            tracing.failed("timeout")
            logger.warning("handler timed out", extra={"request_id": msg.id})
            final = error_reply(TIMEOUT_TEXT)
        except Exception:
            tracing.failed("internal")
            logger.exception("handler failed", extra={"request_id": msg.id})
            final = error_reply(INTERNAL_ERROR_TEXT)
        if final is None:
            tracing.failed("internal")
            logger.error("handler ended without a final reply", extra={"request_id": msg.id})
            final = error_reply(INTERNAL_ERROR_TEXT)
        stamped = self._stamp(final, msg)
        sent = await self._send(outbox, stamped)
        return stamped if sent is None else sent

    async def _relay(self, msg: Message, user: str, outbox: Outbox) -> Message | None:
        """Send deltas and events as they come; return the first final reply."""
        replies = self.handle(msg, user)
        try:
            async for out in replies:
                if is_final(out):
                    return out
                await self._send(outbox, self._stamp(out, msg))
        finally:
            if isinstance(replies, AsyncGenerator):
                await replies.aclose()
        return None

    def _stamp(self, out: Message, request: Message) -> Message:
        return stamp(out, request, reply_id=self._new_id(), now_ns=self._clock_ns())

    async def _send(self, outbox: Outbox, msg: Message) -> Message | None:
        fitted = fit_reply(msg, self.limits.max_message_bytes)
        if fitted is None:
            logger.warning("dropped an oversized reply", extra={"reply_to": msg.context.reply_to})
            return None
        await outbox.put(fitted)
        return fitted

    async def _write_replies(self, outbox: Outbox, context: ConverseContext) -> None:
        """The single writer: drain the outbox into batched responses."""
        pending: Message | None = None
        closed = False
        while not closed:
            head = pending if pending is not None else await outbox.get()
            if head is None:
                return
            batch, pending, closed = self._take_batch(head, outbox)
            try:
                async with asyncio.timeout(self.limits.write_timeout_s):
                    await context.write(ConverseResponse(messages=batch))
            except TimeoutError as exc:
                raise _ClientStalled from exc

    def _take_batch(
        self, head: Message, outbox: Outbox
    ) -> tuple[list[Message], Message | None, bool]:
        """Messages already queued that fit one response with ``head``.

        Returns the batch, a message that did not fit (sent next), and whether
        the end-of-call marker was reached.
        """
        batch = [head]
        size = head.ByteSize() + RESPONSE_OVERHEAD_BYTES
        while not outbox.empty() and len(batch) < self.limits.max_batch:
            item = outbox.get_nowait()
            if item is None:
                return batch, None, True
            item_size = item.ByteSize() + RESPONSE_OVERHEAD_BYTES
            if size + item_size > self.limits.max_message_bytes:
                return batch, item, False
            batch.append(item)
            size += item_size
        return batch, None, False
