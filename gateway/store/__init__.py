"""The storage layer behind "nothing lost": dedup keys, entity seq, per-user event
logs, in-flight messages, the durable inbound queue, rate-limit windows,
connection counts and single-use tickets.

Two implementations keep one contract (``Store``): ``SQLiteStore``
(``gateway.store.sqlite``, the embedded default, one node) and ``RedisStore``
(``gateway.store.redis``, shared by every replica); ``connect_store``
(``gateway.store.connect``) picks one from the configuration. Bodies are opaque
bytes (serialized ``dialog.v1.Message``), so the stores stay schema-agnostic.

Every time a store records comes from the ``clock`` it was built with (wall-clock
seconds since the epoch: the values outlive the process and are shared by
replicas), except ``rate_acquire``, which takes ``now_s`` like
``gateway.ratelimit.SlidingWindow``. Failures of the store itself raise
``gateway.errors.StoreUnavailable``; a bad argument raises ``ValueError``.

This package's ``__init__``, ``records`` and ``rules`` are pure (no I/O).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

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
    OutcomeTemplate,
    QueuedMessage,
    WorkTemplate,
)

__all__ = [
    "Admitted",
    "Completion",
    "DeadLetter",
    "DedupResult",
    "DedupStatus",
    "EntityDecision",
    "EntityVerdict",
    "Event",
    "EventsPage",
    "Intake",
    "OutcomeTemplate",
    "QueuedMessage",
    "Store",
    "WorkTemplate",
]


class Store(Protocol):
    """The contract both stores keep. Every write is durable when its call returns."""

    # -- idempotency keys ------------------------------------------------------------
    async def remember(self, key: str, body_hash: str, ttl_s: float) -> DedupResult:
        """Atomically decide about a message id: NEW (first time, or the old entry
        expired: the key is now held for ``ttl_s`` with no outcome), REPLAY (same
        ``body_hash`` within the TTL, with the stored outcome if any) or CONFLICT
        (another ``body_hash``; nothing changes). Exactly one concurrent caller,
        on any replica, gets NEW."""
        ...

    async def record_outcome(self, key: str, outcome: bytes, ttl_s: float | None = None) -> None:
        """Store the outcome that replays of ``key`` get. With ``ttl_s`` the key is
        held for ``ttl_s`` from now (so ``remember`` can hold a key briefly while
        it is pending, and a crash frees it soon); without, the expiry stays. A key
        that is no longer held is left alone."""
        ...

    async def outcome(self, key: str) -> bytes | None:
        """The recorded outcome of a live key, else None."""
        ...

    async def forget(self, key: str) -> None:
        """Drop ``key``, so the next ``remember`` is NEW (the first attempt failed
        before it had an outcome)."""
        ...

    # -- per-entity order ------------------------------------------------------------
    async def apply_entity_seq(self, entity: str, seq: int) -> EntityDecision:
        """Atomically: APPLY when ``seq`` is last + 1 (last becomes ``seq``),
        DUPLICATE when ``seq`` <= last, GAP when ``seq`` > last + 1; ``expected``
        is the seq wanted next. An unseen entity has last = 0. ``entity`` is an
        opaque key (the caller scopes it per user). ``seq`` must be >= 1."""
        ...

    async def release_entity_seq(self, entity: str, seq: int) -> bool:
        """Undo an APPLY of ``seq`` whose message was not delivered: last goes back to
        ``seq - 1``, but only while last is still ``seq`` (True when it did)."""
        ...

    # -- a client message on its way in ----------------------------------------------
    async def admit(self, intake: Intake) -> Admitted:
        """Take a client message in: hold its key (``remember``), apply its entity seq
        (``apply_entity_seq``), append it to its user's log (``append_event``) and keep it
        in flight (``track_inflight``, body ``intake.work.fill(seq)``), each step only when
        the one before allows it. A key that is not NEW stops there; so does an entity
        seq that is not APPLY, and a GAP also drops the key it held. One atomic step, so a
        failure leaves nothing at all (SQLite: one transaction, one commit; Redis: one
        script, which Redis refuses, out of memory or read-only, at its first write)."""
        ...

    async def complete(self, completion: Completion) -> int:
        """Append a message's final reply to its user's log and return its seq; with it,
        record the outcome of the message's key (``record_outcome``, body
        ``completion.outcome.fill(seq)``, if any) and settle its in-flight record
        (``settle_inflight``, if any). One atomic step (SQLite: one commit; Redis: one
        script)."""
        ...

    # -- per-user event log ----------------------------------------------------------
    async def append_event(self, user: str, message: bytes, *, durable: bool = True) -> int:
        """Keep ``message`` in ``user``'s log and return its seq: 1 for the first,
        then strictly increasing with no gap, also under concurrent appenders on
        any replica, and never reused after trimming. Not ``durable`` (a delta of a
        streamed reply): the store may answer before the write is on disk; it is
        there with the next durable write. A power loss can then drop the last such
        events, and their seqs are given again."""
        ...

    async def events_after(self, user: str, after_seq: int, limit: int) -> EventsPage:
        """Up to ``limit`` events with seq > ``after_seq``, in seq order; or a reset
        (see ``EventsPage``) when that point is gone. ``after_seq`` 0 reads from
        the start of the log."""
        ...

    async def trim_events(self, user: str, max_len: int, max_age_s: float) -> int:
        """Drop the oldest events beyond the newest ``max_len`` and the oldest ones
        older than ``max_age_s`` (up to the first younger one); return how many
        went. A store may also drop a log whose newest event is older than
        ``max_age_s`` on its own."""
        ...

    async def last_event_seq(self, user: str) -> int:
        """The seq of ``user``'s latest event ever appended (0 before the first)."""
        ...

    def watch_events(self) -> AsyncIterator[tuple[str, int]]:
        """(user, seq) of each event other store instances append from now on, so
        that a replica can wake its subscribers. A store that only one process
        opens yields nothing. Notices are a hint, not a log: one missed (say while
        the store reconnects) is caught up by reading ``events_after``; a broken
        connection raises ``StoreUnavailable`` and the caller watches again."""
        ...

    # -- durable inbound queue -------------------------------------------------------
    async def enqueue(self, message_id: str, backend: str, body: bytes) -> str:
        """Add a message to ``backend``'s queue; durable before returning. Returns
        its entry id. It does not deduplicate: ``remember`` comes first."""
        ...

    async def track_inflight(
        self, message_id: str, backend: str, body: bytes, lease_s: float
    ) -> str:
        """Keep a message that is being delivered directly (not through the queue), durably,
        until ``settle_inflight``; returns its id. If it is still there ``lease_s`` from
        now (its gateway died), ``requeue_stale_inflight`` moves it into the queue."""
        ...

    async def settle_inflight(self, inflight_id: str, *, requeue: bool = False) -> str:
        """Forget an in-flight message (delivered, or given up and reported to its
        client), or with ``requeue`` move it into its back-end's queue in one step, with
        no attempts yet; returns the queue entry id then, else "". Idempotent: an id that
        is gone (settled, or requeued as stale) returns ""."""
        ...

    async def requeue_stale_inflight(self, limit: int) -> int:
        """Move up to ``limit`` in-flight messages whose lease has passed into their
        back-ends' queues (each in one step); return how many moved."""
        ...

    async def claim(
        self, backend: str, consumer: str, count: int, min_idle_s: float
    ) -> list[QueuedMessage]:
        """Deliver up to ``count`` entries to ``consumer``: first those delivered
        before and left unacknowledged (failed, or held by a dead consumer) for at
        least ``min_idle_s`` since their last delivery, then new ones in order. An
        entry that already had ``max_attempts`` deliveries moves to the dead
        letters instead. Two concurrent claims never get the same entry."""
        ...

    async def retry(self, backend: str, entry_id: str, consumer: str) -> QueuedMessage | None:
        """Deliver an entry that failed once more, now, to ``consumer`` (which still
        holds it): count the delivery and restart its idle time. An entry that had
        ``max_attempts`` deliveries moves to the dead letters instead (None); None
        also when the entry is not pending (acknowledged, buried, replayed)."""
        ...

    async def ack(self, backend: str, entry_id: str) -> None:
        """The entry was delivered: remove it for good (idempotent)."""
        ...

    async def fail(self, backend: str, entry_id: str, error: str) -> int:
        """Record a failed delivery; return the deliveries so far (0 for an entry
        that is not pending). At ``max_attempts`` the entry moves to the dead
        letters with ``error``; before, a later ``claim`` retries it once it has
        been idle for ``min_idle_s``."""
        ...

    async def queue_depth(self, backend: str) -> int:
        """Entries of ``backend``'s queue not yet acknowledged (claimed ones included)."""
        ...

    async def hold_queue(self, backend: str, holder: str, lease_s: float) -> bool:
        """Take or renew the right to deliver ``backend``'s queue for ``lease_s``: True
        when ``holder`` has it (one holder at a time on every replica, so the queue is
        delivered in order); a holder that stops renewing loses it when the lease ends."""
        ...

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of every back-end, oldest first."""
        ...

    async def replay_dead_letter(self, entry_id: str) -> bool:
        """Move a dead letter back to its back-end's queue as a new entry with no
        attempts; False when there is no such dead letter."""
        ...

    # -- limits ----------------------------------------------------------------------
    async def rate_acquire(
        self, key: str, limit: int, window_s: float, now_s: float
    ) -> float | None:
        """Sliding window: record an event and return None when fewer than ``limit``
        events of ``key`` happened in (now_s - window_s, now_s]; else record
        nothing and return the seconds until one leaves the window. Atomic."""
        ...

    async def conn_open(self, user: str, limit: int) -> bool:
        """Count one more open connection of ``user`` unless ``limit`` are open."""
        ...

    async def conn_close(self, user: str) -> None:
        """Count one connection of ``user`` as closed (never below zero)."""
        ...

    async def conn_count(self, user: str) -> int:
        """Connections of ``user`` open now. Counts of a process that died without
        closing them do not outlive it (see each store for how)."""
        ...

    # -- single-use tickets (gateway.tickets) ------------------------------------------
    async def ticket_put(self, ticket: str, identity: bytes, ttl_s: float) -> bool:
        """Keep ``identity`` (``gateway.auth.encode_identity``) under ``ticket`` for
        ``ttl_s`` seconds from now; False, keeping nothing, when ``ticket`` is outstanding
        already or the store holds as many tickets as it allows. ``ttl_s`` must be > 0."""
        ...

    async def ticket_take(self, ticket: str) -> bytes | None:
        """What ``ticket`` stands for, removed in the same atomic step: of concurrent
        takers on any replica one gets it; None for an unknown, taken or expired ticket."""
        ...

    # -- lifecycle -------------------------------------------------------------------
    async def ping(self) -> bool:
        """True when the store answers; never raises."""
        ...

    async def close(self) -> None:
        """Release the store's connections and tasks; it cannot be used after."""
        ...
