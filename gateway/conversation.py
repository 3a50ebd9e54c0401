"""One client connection that carries many messages at once (WebSocket, gRPC Converse).

Each admitted message is answered with an ack, then its replies as they stream.
Messages run concurrently as tasks owned by the conversation, bounded by
``MAX_IN_FLIGHT``; leaving the ``async with`` block cancels those still running
(and with them their back-end calls); every outgoing message goes through ``send``, which the
surface implements (and which applies back-pressure). Errors of one message
become an error message for that message; the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from dialog.v1 import message_pb2
from gateway.auth import Identity
from gateway.errors import DialogError, Internal
from gateway.service import Admission, DialogService
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
        on_admit: Callable[[message_pb2.Message], None] | None = None,
    ):
        """With ``on_admit`` (told each admitted message) the connection also carries the
        user's event stream, which brings the replies: only acks, errors and replays
        are sent from here."""
        self._service = service
        self._identity = identity
        self._surface = surface
        self._send = send
        self._on_admit = on_admit
        self._upstreams = service.upstreams(identity)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

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
        try:
            admission = await self._service.admit(self._identity, msg, self._surface)
        except DialogError as exc:
            await self.fail(exc, msg.id)
            return
        if self._on_admit is not None and admission.replay is None:
            self._on_admit(admission.stored)
        await self._slots.acquire()
        name = f"answer:{admission.stored.id}"
        task = asyncio.create_task(self._answer(admission), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, admission: Admission) -> None:
        msg = admission.stored
        try:
            await self._send(make_ack(msg, replay=admission.replay is not None))
            direct = self._on_admit is None or admission.replay is not None
            async for reply in self._service.replies(self._upstreams, self._identity, admission):
                if direct or is_queued(reply):
                    await self._send(reply)
        except DialogError as exc:
            await self._report(exc, msg.id)
        except Exception:
            log.exception("unexpected failure answering a message")
            await self._report(Internal(), msg.id)
        finally:
            self._slots.release()

    async def _report(self, error: DialogError, reply_to: str) -> None:
        # The client may be gone already; then there is no one left to tell.
        with contextlib.suppress(Exception):
            await self.fail(error, reply_to)
