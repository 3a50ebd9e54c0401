"""One client connection that carries many messages at once (WebSocket, gRPC Converse).

Each admitted message is answered with an ack, then its replies as they stream.
Messages run concurrently as tasks owned by the conversation, bounded by
``MAX_IN_FLIGHT``; leaving the ``async with`` block cancels those still running
(and with them their back-end calls); every outgoing message goes through ``send``, which the
surface implements (and which applies back-pressure). Errors of one message
become an error message for that message; the connection stays open.

Each message has its span, from its arrival to its final reply: a child of the trace
context in its own labels, else of the span current when the conversation opened (the
WebSocket connection's, the gRPC call's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from opentelemetry.trace import Span

from dialog.v1 import message_pb2
from gateway import spans, tracing
from gateway.auth import Identity
from gateway.errors import DialogError, Internal
from gateway.messages import Admission
from gateway.service import DialogService
from gateway.translate import is_queued, make_ack, make_error

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64

Send = Callable[[message_pb2.Message], Awaitable[None]]


class Conversation:
    """The shared engine behind a WebSocket and a gRPC ``Converse`` stream."""

    def __init__(
        self,
        service: DialogService,
        identity: Identity,
        surface: str,
        send: Send,
        *,
        origin: object | None = None,
    ):
        """With ``origin`` (the owner of the connection's event-stream subscription) the
        connection also carries the user's event stream, which brings the replies: only
        acks, errors and replays are sent from here, and the stream leaves out the
        messages this connection sent."""
        self._service = service
        self._identity = identity
        self._surface = surface
        self._send = send
        self._origin = origin
        self._upstreams = service.upstreams(identity)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._trace_parent = tracing.current_context()

    async def __aenter__(self) -> Conversation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._upstreams.aclose()

    async def drain(self) -> None:
        """Wait until every message in flight has its final reply."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def fail(self, error: DialogError, reply_to: str = "") -> None:
        """Report an error for one message; the connection stays open."""
        await self._send(make_error(error, reply_to))

    async def submit(self, msg: message_pb2.Message) -> None:
        """Admit ``msg`` and start answering it; waits while too many are in flight."""
        span = spans.message_span(self._service.tracer, self._surface, msg, self._trace_parent)
        try:
            with tracing.current(span):
                admission = await self._service.messages.admit(
                    self._identity, msg, self._surface, self._origin
                )
            spans.admitted(span, admission.stored.id, admission.backend)
            await self._slots.acquire()
        except DialogError as exc:
            spans.end_message(span, exc)
            await self.fail(exc, msg.id)
            return
        except BaseException:
            spans.end_message(span)
            raise
        name = f"answer:{admission.stored.id}"
        task = asyncio.create_task(self._answer(admission, span), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, admission: Admission, span: Span) -> None:
        msg = admission.stored
        error: DialogError | None = None
        try:
            await self._send(make_ack(msg, replay=admission.replay is not None))
            direct = self._origin is None or admission.replay is not None
            async for reply in self._service.messages.replies(
                self._upstreams, self._identity, admission
            ):
                if direct or is_queued(reply):
                    await self._send(reply)
        except DialogError as exc:
            error = exc
            await self._report(exc, msg.id)
        except Exception:
            log.exception("unexpected failure answering a message")
            error = Internal()
            await self._report(error, msg.id)
        finally:
            self._slots.release()
            spans.end_message(span, error)

    async def _report(self, error: DialogError, reply_to: str) -> None:
        # The client may be gone already; then there is no one left to tell.
        with contextlib.suppress(Exception):
            await self.fail(error, reply_to)
