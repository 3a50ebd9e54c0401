"""The embedded store: SQLite in ``DATA_DIR/gateway.db``, no server needed (one node).

The tables live in ``gateway.store.sqlite_db`` and run on one dedicated thread,
so the event loop never waits on SQLite or on an fsync. Durability: WAL with
``synchronous=FULL``, so a call returns only after its commit reached the disk.
Calls that wait together share one transaction and one fsync (group commit).

Rate-limit windows, connection counts and tickets are not written to the file: on
one node they are the process's own state. Kept in memory, connection counts die
with the process (a crash leaks none), and a rate check never queues behind an
fsync. The windows reuse ``gateway.ratelimit.SlidingWindow``, the tickets
``gateway.tickets.TicketBook`` (at most ``MAX_TICKETS`` outstanding).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from gateway.errors import StoreUnavailable
from gateway.ratelimit import SlidingWindow
from gateway.store import rules
from gateway.store.records import (
    Admitted,
    Completion,
    DeadLetter,
    DedupResult,
    EntityDecision,
    EventsPage,
    Intake,
    QueuedMessage,
)
from gateway.store.sqlite_db import SYNC_PRAGMA, Database, GroupCommit
from gateway.tickets import TicketBook

T = TypeVar("T")

DB_NAME = "gateway.db"
DEFAULT_MAX_ATTEMPTS = 5


class SQLiteStore:
    """``gateway.store.Store`` on a local SQLite file. Open it with ``SQLiteStore.open``."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._commits: GroupCommit | None = GroupCommit(db)
        self._clock = clock
        self._windows: dict[tuple[int, float], SlidingWindow] = {}
        self._conns: dict[str, int] = {}
        self._tickets = TicketBook()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        sync: str = "full",
    ) -> SQLiteStore:
        """Open (or create) the database at ``path``, e.g. ``DATA_DIR / DB_NAME``."""
        rules.require(max_attempts >= 1, "max_attempts must be at least 1")
        rules.require(sync in SYNC_PRAGMA, f"sync must be one of {sorted(SYNC_PRAGMA)}")
        try:
            db = await asyncio.to_thread(Database, path, max_attempts, sync)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the message store {path}") from exc
        return cls(db, clock)

    async def _run(self, call: Callable[[Database], T], durable: bool = True) -> T:
        """Run ``call`` on the store's thread (``durable``: see ``GroupCommit``); SQLite
        errors become ``StoreUnavailable``."""
        commits = self._commits
        if commits is None:
            raise StoreUnavailable("the message store is closed")
        try:
            return await commits.submit_async(call, durable)
        except sqlite3.Error as exc:
            raise StoreUnavailable("the message store failed") from exc

    # -- idempotency keys ------------------------------------------------------------
    async def remember(self, key: str, body_hash: str, ttl_s: float) -> DedupResult:
        rules.require(ttl_s > 0, "ttl_s must be positive")
        now_s = self._clock()
        return await self._run(lambda db: db.remember(key, body_hash, ttl_s, now_s))

    async def record_outcome(self, key: str, outcome: bytes, ttl_s: float | None = None) -> None:
        expires_at_s = None if ttl_s is None else self._clock() + ttl_s
        await self._run(lambda db: db.record_outcome(key, outcome, expires_at_s))

    async def outcome(self, key: str) -> bytes | None:
        now_s = self._clock()
        return await self._run(lambda db: db.outcome(key, now_s))

    async def forget(self, key: str) -> None:
        await self._run(lambda db: db.forget(key))

    # -- per-entity order ------------------------------------------------------------
    async def apply_entity_seq(self, entity: str, seq: int) -> EntityDecision:
        rules.require(seq >= 1, "seq must be at least 1")
        return await self._run(lambda db: db.apply_entity_seq(entity, seq))

    async def release_entity_seq(self, entity: str, seq: int) -> bool:
        rules.require(seq >= 1, "seq must be at least 1")
        return await self._run(lambda db: db.release_entity_seq(entity, seq))

    # -- a client message on its way in ----------------------------------------------
    async def admit(self, intake: Intake) -> Admitted:
        rules.require(intake.lease_s > 0, "lease_s must be positive")
        rules.require(not intake.key or intake.hold_s > 0, "hold_s must be positive")
        rules.require(not intake.entity or intake.entity_seq >= 1, "seq must be at least 1")
        now_s = self._clock()
        return await self._run(lambda db: db.admit(intake, now_s))

    async def complete(self, completion: Completion) -> int:
        rules.require(not completion.key or completion.ttl_s > 0, "ttl_s must be positive")
        now_s = self._clock()
        return await self._run(lambda db: db.complete(completion, now_s))

    # -- per-user event log ----------------------------------------------------------

    async def append_event(self, user: str, message: bytes, *, durable: bool = True) -> int:
        now_s = self._clock()
        return await self._run(lambda db: db.append_event(user, message, now_s), durable)

    async def events_after(self, user: str, after_seq: int, limit: int) -> EventsPage:
        rules.require(after_seq >= 0 and limit >= 1, "after_seq >= 0 and limit >= 1")
        return await self._run(lambda db: db.events_after(user, after_seq, limit))

    async def trim_events(self, user: str, max_len: int, max_age_s: float) -> int:
        rules.require(max_len >= 0 and max_age_s >= 0, "max_len and max_age_s must be >= 0")
        now_s = self._clock()
        return await self._run(lambda db: db.trim_events(user, max_len, max_age_s, now_s))

    async def last_event_seq(self, user: str) -> int:
        return await self._run(lambda db: db.last_event_seq(user))

    async def watch_events(self) -> AsyncIterator[tuple[str, int]]:
        # One process owns the file: there are no other appenders to hear about.
        await asyncio.Event().wait()
        yield ("", 0)  # pragma: no cover  (never reached: makes this an async generator)

    # -- durable inbound queue -------------------------------------------------------
    async def enqueue(self, message_id: str, backend: str, body: bytes) -> str:
        now_s = self._clock()
        return await self._run(lambda db: db.enqueue(message_id, backend, body, now_s))

    async def track_inflight(
        self, message_id: str, backend: str, body: bytes, lease_s: float
    ) -> str:
        rules.require(lease_s > 0, "lease_s must be positive")
        until_s = self._clock() + lease_s
        return await self._run(lambda db: db.track_inflight(message_id, backend, body, until_s))

    async def settle_inflight(self, inflight_id: str, *, requeue: bool = False) -> str:
        now_s = self._clock()
        return await self._run(lambda db: db.settle_inflight(inflight_id, requeue, now_s))

    async def requeue_stale_inflight(self, limit: int) -> int:
        rules.require(limit >= 1, "limit must be at least 1")
        now_s = self._clock()
        return await self._run(lambda db: db.requeue_stale_inflight(limit, now_s))

    async def claim(
        self, backend: str, consumer: str, count: int, min_idle_s: float
    ) -> list[QueuedMessage]:
        rules.require(count >= 1 and min_idle_s >= 0, "count >= 1 and min_idle_s >= 0")
        now_s = self._clock()
        return await self._run(lambda db: db.claim(backend, consumer, count, min_idle_s, now_s))

    async def retry(self, backend: str, entry_id: str, consumer: str) -> QueuedMessage | None:
        now_s = self._clock()
        return await self._run(lambda db: db.retry(backend, entry_id, consumer, now_s))

    async def ack(self, backend: str, entry_id: str) -> None:
        await self._run(lambda db: db.ack(backend, entry_id))

    async def fail(self, backend: str, entry_id: str, error: str) -> int:
        now_s = self._clock()
        return await self._run(lambda db: db.fail(backend, entry_id, error, now_s))

    async def queue_depth(self, backend: str) -> int:
        return await self._run(lambda db: db.queue_depth(backend))

    async def hold_queue(self, backend: str, holder: str, lease_s: float) -> bool:
        rules.require(lease_s > 0, "lease_s must be positive")
        now_s = self._clock()
        return await self._run(lambda db: db.hold_queue(backend, holder, now_s + lease_s, now_s))

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        rules.require(limit >= 1, "limit must be at least 1")
        return await self._run(lambda db: db.dead_letters(limit))

    async def replay_dead_letter(self, entry_id: str) -> bool:
        now_s = self._clock()
        return await self._run(lambda db: db.replay_dead_letter(entry_id, now_s))

    # -- limits (process memory, see the module docstring) ----------------------------
    async def rate_acquire(
        self, key: str, limit: int, window_s: float, now_s: float
    ) -> float | None:
        rules.require(limit >= 1 and window_s > 0, "limit >= 1 and window_s > 0")
        window = self._windows.get((limit, window_s))
        if window is None:
            window = self._windows[(limit, window_s)] = SlidingWindow(limit, window_s)
        return window.acquire(key, now_s)

    async def conn_open(self, user: str, limit: int) -> bool:
        count = self._conns.get(user, 0)
        if count >= limit:
            return False
        self._conns[user] = count + 1
        return True

    async def conn_close(self, user: str) -> None:
        count = self._conns.pop(user, 0) - 1
        if count > 0:
            self._conns[user] = count

    async def conn_count(self, user: str) -> int:
        return self._conns.get(user, 0)

    # -- single-use tickets (process memory, see the module docstring) -----------------
    async def ticket_put(self, ticket: str, identity: bytes, ttl_s: float) -> bool:
        rules.require(ttl_s > 0, "ttl_s must be positive")
        now_s = self._clock()
        return self._tickets.put(ticket, identity, now_s + ttl_s, now_s)

    async def ticket_take(self, ticket: str) -> bytes | None:
        return self._tickets.take(ticket, self._clock())

    # -- lifecycle -------------------------------------------------------------------
    async def ping(self) -> bool:
        try:
            return await self._run(lambda db: db.ping())
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        commits, self._commits = self._commits, None
        if commits is not None:
            await asyncio.to_thread(commits.close)
