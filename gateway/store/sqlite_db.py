"""The synchronous half of the SQLite store: one connection, used from one thread.

WAL journal. With ``sync="full"`` (``STORE_SYNC``, the default) every commit fsyncs
the WAL, so what a call committed survives a crash or power loss. With ``"normal"``
a commit reaches the operating system but is fsynced only at checkpoints: it
survives the gateway's crash (``kill -9``), and the last commits can be lost if
the machine itself goes down; a commit then costs about a tenth of the time.
A batch of calls none of which asks for durability (deltas of a streamed reply) is
committed like with ``"normal"``: the WAL is written in order, so the next fsynced
commit covers it.
Read-modify-write decisions run in ``BEGIN IMMEDIATE`` transactions, which take
SQLite's single write lock first, so they are atomic also against other
connections to the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gateway.store import rules
from gateway.store.records import (
    Admitted,
    Completion,
    DeadLetter,
    DedupResult,
    DedupStatus,
    EntityDecision,
    EntityVerdict,
    Event,
    EventsPage,
    Intake,
    QueuedMessage,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 128
T = TypeVar("T")
DEDUP_PURGE_INTERVAL_S = 60.0
# STORE_SYNC: when a commit is fsynced (see the module docstring).
SYNC_PRAGMA = {"full": "FULL", "normal": "NORMAL"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, expires_at REAL NOT NULL, outcome BLOB
);
CREATE INDEX IF NOT EXISTS dedup_by_expiry ON dedup (expires_at);
CREATE TABLE IF NOT EXISTS entity_seq (entity TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS event_seq (user_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    user_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, backend TEXT NOT NULL, message_id TEXT NOT NULL,
    body BLOB NOT NULL, enqueued_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    consumer TEXT, delivered_at REAL, error TEXT
);
CREATE INDEX IF NOT EXISTS queue_by_backend ON queue (backend, delivered_at, id);
CREATE TABLE IF NOT EXISTS inflight (
    id INTEGER PRIMARY KEY AUTOINCREMENT, backend TEXT NOT NULL, message_id TEXT NOT NULL,
    body BLOB NOT NULL, until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS inflight_by_until ON inflight (until);
CREATE TABLE IF NOT EXISTS queue_holders (
    backend TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, backend TEXT NOT NULL, message_id TEXT NOT NULL,
    body BLOB NOT NULL, attempts INTEGER NOT NULL, error TEXT NOT NULL, dead_at REAL NOT NULL
);
"""


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, holding the write lock from its first statement. Inside a
    transaction already (a batch's, or a call made by another call), it is part of that
    one: what raises out of it is undone by whoever opened the transaction
    (``Database.run_batch`` keeps each call of a batch in a savepoint of its own)."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def _snapshot(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: its statements see the same committed state (inside a
    batch, the batch's transaction already does)."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


def _row_id(entry_id: str) -> int | None:
    return int(entry_id) if entry_id.isdigit() else None


class Database:
    """The store's tables. Times are arguments; the async front reads the clock."""

    def __init__(self, path: Path, max_attempts: int, sync: str = "full") -> None:
        self._fsync_each = sync == "full"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE), never implicit.
        # Opened on one thread, used on the store's own (GroupCommit): one at a time.
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._max_attempts = max_attempts
        self._next_purge_s = 0.0
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={SYNC_PRAGMA[sync]}")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"{path}: schema {version} is newer than this gateway")
            with _immediate(self._db):
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def run_batch(
        self, calls: Sequence[Callable[[Database], Any]], durable: bool = True
    ) -> list[tuple[bool, Any]]:
        """Run ``calls`` in one write transaction, so they share one commit (one fsync;
        none when not ``durable``: see the module docstring).

        Returns (True, value) or (False, exception) per call. Each call is a savepoint (or,
        alone, the transaction): one that raises is undone alone. When the commit fails,
        every call gets that error.
        """
        if durable or not self._fsync_each:
            return self._run_batch(calls)
        # The safety level cannot change inside a transaction: around it, then.
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._run_batch(calls)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def _run_batch(self, calls: Sequence[Callable[[Database], Any]]) -> list[tuple[bool, Any]]:
        if len(calls) == 1:  # the call's own transaction: no savepoint needed
            try:
                with _immediate(self._db):
                    return [(True, calls[0](self))]
            except Exception as exc:
                if self._db.in_transaction:  # the commit failed
                    self._db.execute("ROLLBACK")
                return [(False, exc)]
        results: list[tuple[bool, Any]] = []
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for call in calls:
                db.execute("SAVEPOINT step")
                try:
                    results.append((True, call(self)))
                except Exception as exc:
                    db.execute("ROLLBACK TO step")
                    results.append((False, exc))
                db.execute("RELEASE step")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return [(False, exc)] * len(calls)
        return results

    def pragma(self, name: str) -> str:
        return str(self._db.execute(f"PRAGMA {name}").fetchone()[0])

    # -- idempotency keys ------------------------------------------------------------
    def remember(self, key: str, body_hash: str, ttl_s: float, now_s: float) -> DedupResult:
        with _immediate(self._db) as db:
            if now_s >= self._next_purge_s:
                db.execute("DELETE FROM dedup WHERE expires_at <= ?", (now_s,))
                self._next_purge_s = now_s + DEDUP_PURGE_INTERVAL_S
            row = db.execute(
                "SELECT body_hash, expires_at, outcome FROM dedup WHERE key = ?", (key,)
            ).fetchone()
            stored_hash, expires_at_s = (row[0], row[1]) if row else (None, None)
            status = rules.dedup_status(stored_hash, expires_at_s, body_hash, now_s)
            if status is DedupStatus.NEW:
                db.execute(
                    "INSERT OR REPLACE INTO dedup (key, body_hash, expires_at, outcome)"
                    " VALUES (?, ?, ?, NULL)",
                    (key, body_hash, now_s + ttl_s),
                )
                return DedupResult(status)
            return DedupResult(status, row[2] if status is DedupStatus.REPLAY else None)

    def record_outcome(self, key: str, outcome: bytes, expires_at_s: float | None) -> None:
        self._db.execute(
            "UPDATE dedup SET outcome = ?, expires_at = COALESCE(?, expires_at) WHERE key = ?",
            (outcome, expires_at_s, key),
        )

    def outcome(self, key: str, now_s: float) -> bytes | None:
        row = self._db.execute(
            "SELECT outcome FROM dedup WHERE key = ? AND expires_at > ?", (key, now_s)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def forget(self, key: str) -> None:
        self._db.execute("DELETE FROM dedup WHERE key = ?", (key,))

    # -- per-entity order ------------------------------------------------------------
    def apply_entity_seq(self, entity: str, seq: int) -> EntityDecision:
        with _immediate(self._db) as db:
            row = db.execute("SELECT last_seq FROM entity_seq WHERE entity = ?", (entity,))
            found = row.fetchone()
            decision = rules.entity_decision(found[0] if found else 0, seq)
            if decision.verdict is EntityVerdict.APPLY:
                db.execute("INSERT OR REPLACE INTO entity_seq VALUES (?, ?)", (entity, seq))
            return decision

    def release_entity_seq(self, entity: str, seq: int) -> bool:
        with _immediate(self._db) as db:
            cursor = db.execute(
                "UPDATE entity_seq SET last_seq = ? WHERE entity = ? AND last_seq = ?",
                (seq - 1, entity, seq),
            )
            return cursor.rowcount == 1

    # -- a client message on its way in ----------------------------------------------
    def admit(self, intake: Intake, now_s: float) -> Admitted:
        """``Store.admit`` in one transaction: a step that raises undoes them all."""
        with _immediate(self._db):
            dedup = None
            if intake.key:
                dedup = self.remember(intake.key, intake.body_hash, intake.hold_s, now_s)
                if dedup.status is not DedupStatus.NEW:
                    return Admitted(dedup)
            decision = None
            if intake.entity:
                decision = self.apply_entity_seq(intake.entity, intake.entity_seq)
                if decision.verdict is EntityVerdict.GAP and intake.key:
                    self.forget(intake.key)
                if decision.verdict is not EntityVerdict.APPLY:
                    return Admitted(dedup, decision)
            seq = self.append_event(intake.user, intake.event, now_s)
            body = intake.work.fill(seq)
            until_s = now_s + intake.lease_s
            inflight = self.track_inflight(intake.message_id, intake.backend, body, until_s)
            return Admitted(dedup, decision, seq, inflight)

    def complete(self, completion: Completion, now_s: float) -> int:
        """``Store.complete`` in one transaction."""
        with _immediate(self._db):
            seq = self.append_event(completion.user, completion.event, now_s)
            if completion.key and completion.outcome is not None:
                outcome = completion.outcome.fill(seq)
                self.record_outcome(completion.key, outcome, now_s + completion.ttl_s)
            if completion.inflight:
                self.settle_inflight(completion.inflight, False, now_s)
            return seq

    # -- per-user event log ----------------------------------------------------------
    def append_event(self, user: str, body: bytes, now_s: float) -> int:
        with _immediate(self._db) as db:
            seq = int(
                db.execute(
                    "INSERT INTO event_seq VALUES (?, 1) ON CONFLICT (user_id)"
                    " DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
                    (user,),
                ).fetchone()[0]
            )
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (user, seq, now_s, body))
            return seq

    def _last_seq(self, user: str) -> int:
        row = self._db.execute("SELECT last_seq FROM event_seq WHERE user_id = ?", (user,))
        found = row.fetchone()
        return int(found[0]) if found else 0

    def events_after(self, user: str, after_seq: int, limit: int) -> EventsPage:
        with _snapshot(self._db) as db:
            last = self._last_seq(user)
            oldest = db.execute("SELECT MIN(seq) FROM events WHERE user_id = ?", (user,))
            first = rules.first_seq(oldest.fetchone()[0], last)
            if rules.is_reset(after_seq, first, last):
                return EventsPage((), True, first, last)
            rows = db.execute(
                "SELECT seq, body, at FROM events WHERE user_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (user, after_seq, limit),
            ).fetchall()
        return EventsPage(tuple(Event(*row) for row in rows), False, first, last)

    def trim_events(self, user: str, max_len: int, max_age_s: float, now_s: float) -> int:
        with _immediate(self._db) as db:
            last = self._last_seq(user)
            by_len = rules.size_trim_point(last, max_len)
            young = db.execute(
                "SELECT seq FROM events WHERE user_id = ? AND seq >= ? AND at >= ?"
                " ORDER BY seq LIMIT 1",
                (user, by_len, rules.age_cutoff_s(now_s, max_age_s)),
            ).fetchone()
            keep_from = young[0] if young else last + 1
            deleted = db.execute(
                "DELETE FROM events WHERE user_id = ? AND seq < ?", (user, keep_from)
            )
            return deleted.rowcount

    def last_event_seq(self, user: str) -> int:
        return self._last_seq(user)

    # -- durable inbound queue -------------------------------------------------------
    def enqueue(self, message_id: str, backend: str, body: bytes, now_s: float) -> str:
        cursor = self._db.execute(
            "INSERT INTO queue (backend, message_id, body, enqueued_at) VALUES (?, ?, ?, ?)",
            (backend, message_id, body, now_s),
        )
        return str(cursor.lastrowid)

    def track_inflight(self, message_id: str, backend: str, body: bytes, until_s: float) -> str:
        cursor = self._db.execute(
            "INSERT INTO inflight (backend, message_id, body, until) VALUES (?, ?, ?, ?)",
            (backend, message_id, body, until_s),
        )
        return str(cursor.lastrowid)

    def settle_inflight(self, inflight_id: str, requeue: bool, now_s: float) -> str:
        row_id = _row_id(inflight_id)
        with _immediate(self._db) as db:
            entry = ""
            if requeue:
                cursor = db.execute(
                    "INSERT INTO queue (backend, message_id, body, enqueued_at)"
                    " SELECT backend, message_id, body, ? FROM inflight WHERE id = ?",
                    (now_s, row_id),
                )
                entry = str(cursor.lastrowid) if cursor.rowcount else ""
            db.execute("DELETE FROM inflight WHERE id = ?", (row_id,))
            return entry

    def requeue_stale_inflight(self, limit: int, now_s: float) -> int:
        with _immediate(self._db) as db:
            stale = [
                str(row[0])
                for row in db.execute(
                    "SELECT id FROM inflight WHERE until <= ? ORDER BY id LIMIT ?", (now_s, limit)
                )
            ]
            for inflight_id in stale:
                self.settle_inflight(inflight_id, True, now_s)
            return len(stale)

    def claim(
        self, backend: str, consumer: str, count: int, min_idle_s: float, now_s: float
    ) -> list[QueuedMessage]:
        columns = "id, message_id, body, attempts, error"
        with _immediate(self._db) as db:
            rows = db.execute(
                f"SELECT {columns} FROM queue WHERE backend = ? AND delivered_at IS NOT NULL"
                " AND delivered_at <= ? ORDER BY id LIMIT ?",
                (backend, now_s - min_idle_s, count),
            ).fetchall()
            rows += db.execute(
                f"SELECT {columns} FROM queue WHERE backend = ? AND delivered_at IS NULL"
                " ORDER BY id LIMIT ?",
                (backend, count - len(rows)),
            ).fetchall()
            claimed = []
            for row_id, message_id, body, attempts, error in rows:
                if rules.goes_dead(attempts, self._max_attempts):
                    self._bury(row_id, rules.lost_delivery_error(error), now_s)
                    continue
                db.execute(
                    "UPDATE queue SET attempts = attempts + 1, consumer = ?, delivered_at = ?"
                    " WHERE id = ?",
                    (consumer, now_s, row_id),
                )
                claimed.append(QueuedMessage(str(row_id), message_id, backend, body, attempts + 1))
            return claimed

    def retry(
        self, backend: str, entry_id: str, consumer: str, now_s: float
    ) -> QueuedMessage | None:
        row_id = _row_id(entry_id)
        with _immediate(self._db) as db:
            row = self._pending(row_id, backend, "message_id, body, attempts, error")
            if row is None:
                return None
            message_id, body, attempts, error = row
            if rules.goes_dead(attempts, self._max_attempts):
                self._bury(row_id, rules.lost_delivery_error(error), now_s)
                return None
            db.execute(
                "UPDATE queue SET attempts = attempts + 1, consumer = ?, delivered_at = ?"
                " WHERE id = ?",
                (consumer, now_s, row_id),
            )
            return QueuedMessage(entry_id, message_id, backend, body, attempts + 1)

    def ack(self, backend: str, entry_id: str) -> None:
        self._db.execute(
            "DELETE FROM queue WHERE id = ? AND backend = ?", (_row_id(entry_id), backend)
        )

    def fail(self, backend: str, entry_id: str, error: str, now_s: float) -> int:
        row_id = _row_id(entry_id)
        with _immediate(self._db) as db:
            row = self._pending(row_id, backend, "attempts")
            if row is None:
                return 0
            db.execute("UPDATE queue SET error = ? WHERE id = ?", (error, row_id))
            if rules.goes_dead(row[0], self._max_attempts):
                self._bury(row_id, error, now_s)
            return int(row[0])

    def _pending(self, row_id: int | None, backend: str, columns: str) -> Any:
        """``columns`` of an entry delivered and not yet acknowledged, else None."""
        return self._db.execute(
            f"SELECT {columns} FROM queue WHERE id = ? AND backend = ?"
            " AND delivered_at IS NOT NULL",
            (row_id, backend),
        ).fetchone()

    def _bury(self, row_id: int | None, error: str, now_s: float) -> None:
        """Move a queue row to the dead letters (inside the caller's transaction)."""
        self._db.execute(
            "INSERT INTO dead_letters (backend, message_id, body, attempts, error, dead_at)"
            " SELECT backend, message_id, body, attempts, ?, ? FROM queue WHERE id = ?",
            (error, now_s, row_id),
        )
        self._db.execute("DELETE FROM queue WHERE id = ?", (row_id,))

    def queue_depth(self, backend: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM queue WHERE backend = ?", (backend,))
        return int(row.fetchone()[0])

    def hold_queue(self, backend: str, holder: str, until_s: float, now_s: float) -> bool:
        with _immediate(self._db) as db:
            row = db.execute(
                "SELECT holder, until FROM queue_holders WHERE backend = ?", (backend,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now_s:
                return False
            db.execute(
                "INSERT OR REPLACE INTO queue_holders VALUES (?, ?, ?)", (backend, holder, until_s)
            )
            return True

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT id, message_id, backend, body, attempts, error, dead_at FROM dead_letters"
            " ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(str(row[0]), *row[1:]) for row in rows]

    def replay_dead_letter(self, entry_id: str, now_s: float) -> bool:
        row_id = _row_id(entry_id)
        with _immediate(self._db) as db:
            moved = db.execute(
                "INSERT INTO queue (backend, message_id, body, enqueued_at)"
                " SELECT backend, message_id, body, ? FROM dead_letters WHERE id = ?",
                (now_s, row_id),
            )
            if moved.rowcount == 0:
                return False
            db.execute("DELETE FROM dead_letters WHERE id = ?", (row_id,))
            return True

    def ping(self) -> bool:
        return bool(self._db.execute("SELECT 1").fetchone() == (1,))


# Who waits for a call's result: a thread (``concurrent.futures.Future``), or a task of
# an event loop (``asyncio.Future``).
Waiter = Future[Any] | asyncio.Future[Any]
# A call of a batch: what to run, who waits for it, and whether its commit is fsynced.
_Call = tuple[Callable[[Database], Any], Waiter, bool]


def _complete(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Complete the asyncio futures of one batch, on their event loop."""
    for future, ok, value in results:
        if future.done():  # cancelled while its call ran
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _started(waiter: Waiter) -> bool:
    """False when the caller gave up before the call started: it is skipped. Once it has
    started it runs to its commit, whether the caller still waits or not."""
    if isinstance(waiter, Future):
        return waiter.set_running_or_notify_cancel()
    return not waiter.cancelled()


class GroupCommit:
    """The store's one thread: it takes every call waiting at once and runs them as one
    batch (``Database.run_batch``), so that concurrent writers share an fsync. A call's
    future completes only after its batch committed; the results of a batch reach an
    event loop in one wake-up (``submit_async``)."""

    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._max_batch = max_batch
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sqlite-store", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[Database], T], durable: bool = True) -> Future[T]:
        """Run ``call`` in the next batch; a batch is fsynced when one of its calls is
        ``durable``."""
        future: Future[T] = Future()
        self._calls.put((call, future, durable))
        return future

    def submit_async(
        self, call: Callable[[Database], T], durable: bool = True
    ) -> asyncio.Future[T]:
        """Like ``submit``, for a caller on the running event loop."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((call, future, durable))
        return future

    def close(self) -> None:
        """Finish what was submitted, then close the database (blocking)."""
        self._calls.put(None)
        self._thread.join()
        self._db.close()

    def _serve(self) -> None:
        closing = False
        while not closing:
            batch: list[_Call] = []
            item = self._calls.get()
            while item is not None:
                if _started(item[1]):
                    batch.append(item)
                if len(batch) == self._max_batch or self._calls.empty():
                    break
                item = self._calls.get()
            closing = item is None
            if batch:
                calls = [call for call, _, _ in batch]
                durable = any(durable for _, _, durable in batch)
                self._finish(batch, self._db.run_batch(calls, durable))

    @staticmethod
    def _finish(batch: list[_Call], results: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, waiter, _), (ok, value) in zip(batch, results, strict=True):
            if isinstance(waiter, Future):
                if ok:
                    waiter.set_result(value)
                else:
                    waiter.set_exception(value)
            else:
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, ok, value))
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # its loop was closed: nobody waits
                loop.call_soon_threadsafe(_complete, done)
