"""Delivery of the durable inbound queue: messages acknowledged as ``queued`` because
their back-end was unavailable.

One worker per back-end claims entries in order and delivers them one at a time;
only one replica's worker delivers a given back-end's queue at a time (a lease in
the store), so a back-end sees queued messages in the order they were queued.
A failed delivery is retried in place after an exponential back-off with jitter
(``REDELIVERY_INITIAL_MS`` doubling up to ``REDELIVERY_MAX_MS``); after
``MAX_DELIVERY_ATTEMPTS`` the entry moves to the dead letters and the user is told.
While a back-end's circuit breaker is open the worker waits instead of burning
attempts. An entry held by a replica that died is claimed by another one once it
has been idle for the lease (the route timeout plus the longest back-off), and a
message a dead gateway was delivering directly is queued once its in-flight lease
has passed (``Store.requeue_stale_inflight``).

The workers follow the configuration reloads (``follow``): a back-end added gets its
worker at once, and a removed one's worker stops, its queue staying in the store.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

from gateway import metrics
from gateway.backoff import backoff_delay_s
from gateway.config import GatewayConfig, RetryPolicy
from gateway.delivery import QueuedWork
from gateway.errors import DialogError, StoreUnavailable
from gateway.store import QueuedMessage, Store

log = logging.getLogger(__name__)

BATCH = 16
POLL_S = 1.0
LEASE_MARGIN_S = 5.0
SWEEP_S = 2.0
SWEEP_BATCH = 256
STORE_RETRY = RetryPolicy(max_attempts=0, initial_backoff_ms=200, max_backoff_ms=5000)

Deliver = Callable[[str, QueuedWork], Awaitable[None]]
Dead = Callable[[QueuedWork, DialogError], Awaitable[None]]


class Redelivery:
    """The queue workers of one gateway process."""

    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        *,
        consumer: str,
        timeouts_s: Mapping[str, float],
        deliver: Deliver,
        dead: Dead,
        accepting: Callable[[str], bool],
    ):
        self._store = store
        self._consumer = consumer
        self._deliver = deliver
        self._dead = dead
        self._accepting = accepting
        self._max_attempts = config.max_delivery_attempts
        self._policy = RetryPolicy(
            max_attempts=config.max_delivery_attempts,
            initial_backoff_ms=config.redelivery_initial_ms,
            max_backoff_ms=config.redelivery_max_ms,
        )
        self._lease_margin_s = config.redelivery_max_ms / 1000 + LEASE_MARGIN_S
        self._lease_s = {
            backend: timeout_s + self._lease_margin_s for backend, timeout_s in timeouts_s.items()
        }
        self._wakes = {backend: asyncio.Event() for backend in timeouts_s}
        self._renewed_at: dict[str, float] = {}  # event-loop time of each lease's renewal
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        for backend in self._wakes:
            self._start_worker(backend)
        self._sweeper = asyncio.create_task(self._sweep(), name="redelivery-sweep")

    def _start_worker(self, backend: str) -> None:
        self._workers[backend] = asyncio.create_task(
            self._run(backend), name=f"redelivery-{backend}"
        )

    async def follow(self, timeouts_s: Mapping[str, float]) -> None:
        """Deliver the queues of these back-ends from now on (a configuration reload):
        a worker starts for each one added, at once if ``start`` was called, and the
        worker of each one removed stops (its queued messages stay in the store, for
        the next process or reload that has the back-end). A changed ``timeout_ms``
        changes the lease of the next renewal."""
        removed = [backend for backend in self._wakes if backend not in timeouts_s]
        added = [backend for backend in timeouts_s if backend not in self._wakes]
        for backend, timeout_s in timeouts_s.items():
            self._lease_s[backend] = timeout_s + self._lease_margin_s
        stopped = [self._workers.pop(b) for b in removed if b in self._workers]
        for backend in removed:
            del self._wakes[backend], self._lease_s[backend]
            self._renewed_at.pop(backend, None)
        for backend in added:
            self._wakes[backend] = asyncio.Event()
            if self._sweeper is not None:
                self._start_worker(backend)
        for task in stopped:
            task.cancel()
        await asyncio.gather(*stopped, return_exceptions=True)
        if added or removed:
            log.info(
                "queue workers follow the back-ends: started %s; stopped %s",
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )

    def wake(self, backend: str) -> None:
        """Something was just queued for ``backend``."""
        event = self._wakes.get(backend)
        if event is not None:
            event.set()

    async def close(self) -> None:
        tasks = [*self._workers.values(), *([self._sweeper] if self._sweeper else [])]
        self._workers.clear()
        self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sweep(self) -> None:
        """Queue the in-flight messages of gateways that died before settling them."""
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                moved = await self._store.requeue_stale_inflight(SWEEP_BATCH)
            except StoreUnavailable:
                continue
            if moved:
                log.warning("queued %d in-flight messages left by a stopped gateway", moved)
                for wake in self._wakes.values():
                    wake.set()

    async def _hold(self, backend: str) -> bool:
        """Whether this process holds ``backend``'s queue. The lease is renewed once a third
        of it has passed (not on every poll: on SQLite each renewal is an fsync), so it
        cannot lapse between two renewals."""
        now = asyncio.get_running_loop().time()
        lease_s = self._lease_s[backend]
        if now < self._renewed_at.get(backend, -lease_s) + lease_s / 3:
            return True
        held = await self._store.hold_queue(backend, self._consumer, lease_s)
        if held:
            self._renewed_at[backend] = now
        else:
            self._renewed_at.pop(backend, None)
        return held

    async def _run(self, backend: str) -> None:
        wake, failures = self._wakes[backend], 0
        # Claimed and not yet delivered: after a store outage these go first, in order.
        unfinished: list[QueuedMessage] = []
        while True:
            worked = False
            try:
                if not await self._hold(backend):
                    unfinished = []  # another replica holds the queue now and takes them over
                elif not unfinished:
                    unfinished = await self._store.claim(
                        backend, self._consumer, BATCH, self._lease_s[backend]
                    )
                worked = bool(unfinished)
                while unfinished:
                    await self._deliver_entry(backend, unfinished[0])
                    unfinished.pop(0)
                    if unfinished and not await self._hold(backend):
                        unfinished = []
                        break
                failures = 0
            except StoreUnavailable:
                failures += 1
                log.warning("message store unavailable while delivering the %s queue", backend)
                await asyncio.sleep(backoff_delay_s(STORE_RETRY, failures, random.random()))
                continue
            if worked:
                continue  # there may be more: claim again at once
            wake.clear()
            try:
                async with asyncio.timeout(POLL_S):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _deliver_entry(self, backend: str, entry: QueuedMessage | None) -> None:
        """Deliver one entry until it is delivered, buried, or gone from the queue."""
        while entry is not None:
            # The breaker signals nothing to wait on: poll it.
            while not self._accepting(backend):  # noqa: ASYNC110
                await asyncio.sleep(POLL_S / 4)
            try:
                work = QueuedWork.decode(entry.body)
            except ValueError as exc:
                log.error("unreadable queued message %s: %s", entry.message_id, exc)
                await self._store.fail(backend, entry.entry_id, "unreadable queued message")
                return
            try:
                await self._deliver(backend, work)
            except DialogError as exc:
                attempts = await self._store.fail(backend, entry.entry_id, exc.message)
                if attempts >= self._max_attempts:
                    metrics.REDELIVERIES.labels(backend=backend, outcome="dead").inc()
                    await self._dead(work, exc)
                    return
                metrics.REDELIVERIES.labels(backend=backend, outcome="failed").inc()
                delay = backoff_delay_s(self._policy, max(attempts, 1), random.random())
                await asyncio.sleep(max(delay, self._policy.initial_backoff_ms / 2000))
                entry = await self._store.retry(backend, entry.entry_id, self._consumer)
                continue
            await self._store.ack(backend, entry.entry_id)
            metrics.REDELIVERIES.labels(backend=backend, outcome="delivered").inc()
            return
