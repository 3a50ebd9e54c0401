"""The graceful stop of the gateway process: the ``Drain`` that every surface consults.

On SIGTERM or SIGINT the process goes through three phases (``Phase``, in the order of
``NEXT_PHASE``):

- ``SERVING``: normal work.
- ``DRAINING``: health reports NOT_SERVING; new connections, calls and messages are refused
  with ``Draining`` ("draining; reconnect"); messages already admitted go on. At the work
  deadline (``DRAIN_TIMEOUT_S`` less a closing margin) a message still waiting for its
  back-end is cancelled, and its client gets a ``Draining`` error instead of its reply.
- ``CLOSING``: no work is left (or the closing margin has begun): connections end, after
  what they still owe their clients. WebSockets close with 1001 "reconnect", server-sent
  event streams send ``event: reconnect``, gRPC streams end with UNAVAILABLE. Then the
  listeners close, and the process exits within ``DRAIN_TIMEOUT_S``.

The surfaces call ``check`` before they take new work, consume each message's replies
through ``bounded``, wait for their clients with ``before`` or ``until`` ``Phase.CLOSING``,
and hold ``connection()`` while a WebSocket is open. The server calls ``begin``, ``settle`` and
``connections_closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TypeVar

from gateway import metrics
from gateway.errors import Draining

log = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT = "reconnect"
REFUSED = "the gateway is draining; reconnect"
UNFINISHED = "the gateway stopped before this message was answered; reconnect and send it again"
CLOSE_MARGIN_MAX_S = 2.0


class Phase(enum.IntEnum):
    """Where the process is in its life; it only moves forward."""

    SERVING = 0
    DRAINING = 1
    CLOSING = 2


NEXT_PHASE: dict[Phase, Phase | None] = {
    Phase.SERVING: Phase.DRAINING,
    Phase.DRAINING: Phase.CLOSING,
    Phase.CLOSING: None,
}


def close_margin_s(timeout_s: float) -> float:
    """The end of the drain kept for reporting cancelled work and closing connections."""
    return min(CLOSE_MARGIN_MAX_S, timeout_s / 4)


class Drain:
    """The drain of one process, bounded by ``timeout_s`` from ``begin``.

    Waits that must end at a phase or at the work deadline are ``asyncio.Timeout``
    objects that the drain reschedules, so that waiting costs no task and the waiting
    task itself is the one interrupted.
    """

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("drain: timeout_s must be positive")
        self.timeout_s = timeout_s
        self._phase = Phase.SERVING
        self._watches: dict[Phase, set[asyncio.Timeout]] = {phase: set() for phase in Phase}
        self._work_waits: set[asyncio.Timeout] = set()
        self._deadline: float | None = None  # loop time by which the process has stopped
        self._work = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._connections = 0
        self._no_connections = asyncio.Event()
        self._no_connections.set()

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def draining(self) -> bool:
        """True from ``begin`` on: no new work is taken."""
        return self._phase is not Phase.SERVING

    def check(self) -> None:
        """Refuse new work (a connection, a call, a message) once the drain has begun."""
        if self.draining:
            raise Draining(REFUSED, retry_after_s=1)

    def begin(self) -> None:
        """Start draining (a second call does nothing): from now on ``check`` refuses, and
        work still waiting for its replies at the work deadline is cancelled."""
        if self.draining:
            return
        self._deadline = asyncio.get_running_loop().time() + self.timeout_s
        work_deadline = self._work_deadline()
        for wait in self._work_waits:
            if not wait.expired():
                wait.reschedule(work_deadline)
        metrics.DRAINING.set(1)
        log.info("draining: %d message(s) in flight, %.0f s at most", self._work, self.timeout_s)
        self._enter(Phase.DRAINING)

    async def settle(self) -> None:
        """After ``begin``: wait until no message is in flight (those still waiting at the
        work deadline are cancelled and reported by ``bounded``), at the latest until half
        the closing margin has passed; then enter ``CLOSING``."""
        try:
            async with asyncio.timeout_at(self._until(close_margin_s(self.timeout_s) / 2)):
                await self._idle.wait()
        except TimeoutError:
            log.warning("drain: %d message(s) still in flight; closing anyway", self._work)
        self._enter(Phase.CLOSING)

    async def connections_closed(self) -> None:
        """Wait until every ``connection()`` has ended, at the latest until a quarter of
        the closing margin is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._until(close_margin_s(self.timeout_s) / 4)):
                await self._no_connections.wait()

    def remaining_s(self) -> float:
        """Seconds left until the process must have stopped (the whole timeout before
        ``begin``)."""
        if self._deadline is None:
            return self.timeout_s
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    @contextlib.contextmanager
    def connection(self) -> Iterator[None]:
        """Hold an open connection: the listeners close only after it ends (or at the
        deadline), so that it can finish what it owes its client and close cleanly."""
        self._connections += 1
        self._no_connections.clear()
        try:
            yield
        finally:
            self._connections -= 1
            if self._connections == 0:
                self._no_connections.set()

    async def before(self, phase: Phase, aw: Awaitable[T]) -> T | Phase:
        """``aw``'s result, or ``phase`` when the drain reaches it first; ``aw`` is then
        cancelled (it must be safe to cancel, like a queue's ``get``)."""
        loop = asyncio.get_running_loop()
        timeout = asyncio.timeout_at(loop.time() if self._phase >= phase else None)
        try:
            async with timeout:
                self._watches[phase].add(timeout)
                return await aw
        except TimeoutError:
            if not timeout.expired():
                raise
            return phase
        finally:
            self._watches[phase].discard(timeout)

    async def until(self, phase: Phase, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items`` until the drain reaches ``phase``; the wait for the next one is then
        cancelled (it must be safe to cancel) and the iteration ends."""
        while True:
            try:
                item = await self.before(phase, anext(items))
            except StopAsyncIteration:
                return
            if isinstance(item, Phase):
                return
            yield item

    async def bounded(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items`` (one message's replies), counted as work in flight; a wait for the
        next one that reaches the work deadline is cancelled and raises ``Draining``.

        The deadline guards only the waits, never a ``yield``, so that it interrupts
        the consumer only while this generator is waiting.
        """
        with self._counted():
            while True:
                timeout = self._work_timeout()
                try:
                    async with timeout:
                        item = await anext(items)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not timeout.expired():
                        raise
                    raise self._cancelled() from None
                finally:
                    self._work_waits.discard(timeout)
                yield item

    @contextlib.asynccontextmanager
    async def work(self) -> AsyncIterator[None]:
        """One unit of work in flight (a call awaiting its one answer), counted like
        ``bounded``'s items; at the work deadline the block is cancelled and raises
        ``Draining``."""
        with self._counted():
            timeout = self._work_timeout()
            try:
                async with timeout:
                    yield
            except TimeoutError:
                if not timeout.expired():
                    raise
                raise self._cancelled() from None
            finally:
                self._work_waits.discard(timeout)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Work in flight while the block runs: ``settle`` waits for it to end."""
        self._work += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._work -= 1
            if self._work == 0:
                self._idle.set()

    def _work_timeout(self) -> asyncio.Timeout:
        """A timeout at the work deadline, also one that ``begin`` sets while it runs
        (until the caller discards it from ``_work_waits``)."""
        timeout = asyncio.timeout_at(self._work_deadline())
        self._work_waits.add(timeout)
        return timeout

    @staticmethod
    def _cancelled() -> Draining:
        """What a wait that the work deadline cancelled raises (and counts)."""
        metrics.DRAIN_CANCELLED.inc()
        return Draining(UNFINISHED)

    def _work_deadline(self) -> float | None:
        """When waits for replies are cancelled: None before ``begin``."""
        if self._deadline is None:
            return None
        return self._until(close_margin_s(self.timeout_s))

    def _until(self, margin_s: float) -> float | None:
        return None if self._deadline is None else self._deadline - margin_s

    def _enter(self, phase: Phase) -> None:
        if NEXT_PHASE[self._phase] is not phase:
            raise RuntimeError(f"drain: cannot go from {self._phase.name} to {phase.name}")
        self._phase = phase
        now = asyncio.get_running_loop().time()
        for timeout in self._watches[phase]:
            if not timeout.expired():
                timeout.reschedule(now)
