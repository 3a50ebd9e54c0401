"""One ``Backend.Converse`` call: ``BackendStream``.

A stream is opened lazily per client connection and back-end (by ``BackendPool``,
``gateway.upstream``, on its back-end's current channel). It batches queued messages
into one request, with the time each message has left (``time_left_request``), and
routes replies to the waiting request by ``context.reply_to``; a stream that ends
before a request's final reply gives it ``StreamFailed``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2

from dialog.backend.v1 import backend_pb2, backend_pb2_grpc
from dialog.v1 import message_pb2
from gateway import tracing
from gateway.errors import InvalidMessage, Overloaded
from gateway.translate import is_final

log = logging.getLogger(__name__)

USER_METADATA_KEY = "x-dialog-user"
CLIENT_METADATA_KEY = "x-dialog-client"
MAX_BATCH = 64
OUTBOX_MAX = 256


@dataclass(frozen=True)
class StreamFailed:
    """The stream ended before the request's final reply."""

    code: grpc.StatusCode
    details: str


Reply = message_pb2.Message | StreamFailed
# A message waiting to be written: its deadline (event-loop time) and trace labels.
Outgoing = tuple[message_pb2.Message, float | None, Mapping[str, str]]


def time_left_request(
    batch: list[tuple[message_pb2.Message, float | None]], now: float
) -> backend_pb2.ConverseRequest:
    """One request carrying ``batch``, with each deadline as the time left at ``now``.

    A deadline already past is sent as zero: the back-end should not start on it.
    """
    request = backend_pb2.ConverseRequest(messages=[msg for msg, _ in batch])
    for msg, deadline in batch:
        if deadline is not None and msg.id:
            left = duration_pb2.Duration()
            left.FromNanoseconds(max(0, round((deadline - now) * 1e9)))
            request.timeouts[msg.id].CopyFrom(left)
    return request


class BackendStream:
    """One ``Backend.Converse`` call shared by every request of one client connection."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        backend: str,
        user: str,
        *,
        client: str = "",
        reply_queue_max: int,
    ):
        self.backend = backend
        self.channel = channel
        self._reply_queue_max = reply_queue_max
        stub = backend_pb2_grpc.BackendStub(channel)
        metadata = [(USER_METADATA_KEY, user)]
        if client:
            metadata.append((CLIENT_METADATA_KEY, client))
        self._call = stub.Converse(metadata=tuple(metadata))
        self._pending: dict[str, asyncio.Queue[Reply]] = {}
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue(OUTBOX_MAX)
        self.failure: StreamFailed | None = None
        self._reader = asyncio.create_task(self._read_loop(), name=f"upstream-read:{backend}")
        self._writer = asyncio.create_task(self._write_loop(), name=f"upstream-write:{backend}")

    @property
    def alive(self) -> bool:
        return self.failure is None

    def submit(
        self,
        msg: message_pb2.Message,
        deadline: float | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> asyncio.Queue[Reply]:
        """Queue ``msg`` for the back-end and return the queue its replies arrive on.

        ``deadline`` (event-loop time) is when the gateway gives up on ``msg``; the
        back-end is told the time left when the message is written. ``trace`` (the
        ``traceparent`` and ``tracestate`` of the call's span) replaces whatever trace
        labels ``msg`` has in what the back-end receives.
        """
        if msg.id in self._pending:
            raise InvalidMessage(f"message {msg.id!r} is already in flight")
        if self._outbox.full():
            raise Overloaded("too many messages waiting for this back-end")
        replies: asyncio.Queue[Reply] = asyncio.Queue(self._reply_queue_max)
        if self.failure is not None:
            replies.put_nowait(self.failure)
            return replies
        self._pending[msg.id] = replies
        self._outbox.put_nowait((msg, deadline, trace or {}))
        return replies

    @property
    def idle(self) -> bool:
        """No message is waiting for its replies."""
        return not self._pending

    def end(self, code: grpc.StatusCode, details: str) -> None:
        """End the call now: every waiting message gets ``StreamFailed(code, details)``."""
        self._fail(code, details)

    def forget(self, msg_id: str) -> None:
        """Stop routing replies for ``msg_id`` (its caller has gone)."""
        self._pending.pop(msg_id, None)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = [await self._outbox.get()]
                while not self._outbox.empty() and len(batch) < MAX_BATCH:
                    batch.append(self._outbox.get_nowait())
                request = time_left_request([(m, d) for m, d, _ in batch], loop.time())
                for sent, (_, _, trace) in zip(request.messages, batch, strict=True):
                    tracing.set_labels(sent, trace)
                await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            # A write the transport refused because the connection broke under it
            # surfaces as INTERNAL ("Internal error from Core"): no back-end said
            # so, and the message may be tried again like any lost connection.
            code = exc.code()
            if code is grpc.StatusCode.INTERNAL:
                code = grpc.StatusCode.UNAVAILABLE
            self._fail(code, exc.details() or "")
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            self._fail(grpc.StatusCode.UNAVAILABLE, "stream closed")

    async def _read_loop(self) -> None:
        try:
            async for response in self._call:
                for reply in response.messages:
                    queue = self._pending.get(reply.context.reply_to)
                    if queue is None:
                        continue
                    if is_final(reply):
                        del self._pending[reply.context.reply_to]
                    await queue.put(reply)
            self._fail(grpc.StatusCode.UNAVAILABLE, "back-end ended the stream")
        except grpc.aio.AioRpcError as exc:
            self._fail(exc.code(), exc.details() or "")

    def _fail(self, code: grpc.StatusCode, details: str) -> None:
        if self.failure is not None:
            return
        self.failure = StreamFailed(code, details)
        log.info("stream to %s failed: %s %s", self.backend, code.name, details)
        for queue in self._pending.values():
            # A full queue already holds replies its reader has not taken; it
            # learns of the failure through ``alive`` once it has drained them.
            if not queue.full():
                queue.put_nowait(self.failure)
        self._pending.clear()
        self._call.cancel()

    async def aclose(self) -> None:
        """Cancel the call and its tasks."""
        self._call.cancel()
        for task in (self._reader, self._writer):
            task.cancel()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)
