"""The one contract of gateway.store.Store, run against both stores: SQLite in
tmp_path, and Redis on this suite's own redis-server (tests/support/redis_server.py)
with a fresh key prefix per test. Time is a fake clock the tests move; only the
Redis consumer group's idle time (XAUTOCLAIM) is the server's own, and that is
waited for on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from dialog.v1 import message_pb2
from gateway.delivery import QueuedWork
from gateway.idempotency import Outcome
from gateway.store import (
    Completion,
    DedupStatus,
    EntityDecision,
    EntityVerdict,
    Intake,
    OutcomeTemplate,
    Store,
    WorkTemplate,
)
from gateway.store import redis_scripts as lua
from gateway.store.redis import RedisStore
from gateway.store.rules import NOT_ACKNOWLEDGED
from gateway.store.sqlite import DB_NAME, SQLiteStore
from tests.support.redis_server import RedisServer, running_redis

T = TypeVar("T")
MAX_ATTEMPTS = 3
LEASE_S = 30.0
START_S = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now_s = START_S

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class Harness:
    """One store under test, plus what only the test needs: another instance on the
    same data, a crash-and-reopen, and the death of the process owning connections."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.extra: list[Store] = []
        self.store: Store

    async def open(self) -> Store:
        raise NotImplementedError

    async def second(self) -> Store:
        store = await self.open()
        self.extra.append(store)
        return store

    async def crash_and_reopen(self) -> None:
        raise NotImplementedError

    async def owner_dies(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        for store in [self.store, *self.extra]:
            await store.close()


class SQLiteHarness(Harness):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    async def open(self) -> Store:
        return await SQLiteStore.open(self.path, clock=self.clock, max_attempts=MAX_ATTEMPTS)

    async def crash_and_reopen(self) -> None:
        await self.close()  # closing drops nothing uncommitted: every call committed
        self.extra.clear()
        self.store = await self.open()

    async def owner_dies(self) -> None:
        await self.crash_and_reopen()  # the counts lived in the dead process


class RedisHarness(Harness):
    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server
        self.prefix = f"test-{uuid.uuid4().hex[:12]}:"

    async def open(self) -> Store:
        return await RedisStore.connect(
            self.server.url,
            prefix=self.prefix,
            clock=self.clock,
            max_attempts=MAX_ATTEMPTS,
            replica_lease_s=LEASE_S,
            heartbeat_interval_s=3600,  # the test moves the clock, not the heartbeat
        )

    async def crash_and_reopen(self) -> None:
        await self.close()
        self.extra.clear()
        self.server.restart(crash=True)  # SIGKILL: only the fsynced AOF comes back
        self.store = await self.open()

    async def owner_dies(self) -> None:
        self.extra.append(self.store)  # left without conn_close; its heartbeat stops
        self.store = await self.open()
        self.clock.advance(LEASE_S + 1)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


async def _harness(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if kind == "sqlite":
        return SQLiteHarness(tmp_path / DB_NAME)
    return RedisHarness(request.getfixturevalue("redis_server"))


@pytest.fixture(params=["sqlite", "redis"])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await _harness(request.param, request, tmp_path)
    harness.store = await harness.open()
    yield harness
    await harness.close()


@pytest.fixture
async def rh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await _harness("redis", request, tmp_path)
    harness.store = await harness.open()
    yield harness
    await harness.close()


@pytest.fixture
async def sh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await _harness("sqlite", request, tmp_path)
    harness.store = await harness.open()
    yield harness
    await harness.close()


async def eventually(probe: Callable[[], Awaitable[T]], what: str, timeout_s: float = 5.0) -> T:
    """Poll ``probe`` until it returns something truthy, failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (result := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return result


# -- idempotency keys ---------------------------------------------------------------------
async def test_remember_new_replay_conflict(h: Harness) -> None:
    s = h.store
    assert (await s.remember("m1", "hash-a", 60)).status is DedupStatus.NEW
    pending = await s.remember("m1", "hash-a", 60)
    assert (pending.status, pending.outcome, pending.pending) == (DedupStatus.REPLAY, None, True)
    assert (await s.remember("m1", "hash-b", 60)).status is DedupStatus.CONFLICT
    await s.record_outcome("m1", b"ack+replies")
    replay = await s.remember("m1", "hash-a", 60)
    assert (replay.status, replay.outcome, replay.pending) == (
        DedupStatus.REPLAY,
        b"ack+replies",
        False,
    )
    assert await s.outcome("m1") == b"ack+replies"
    assert await s.outcome("never-seen") is None
    assert (await s.remember("m2", "hash-a", 60)).status is DedupStatus.NEW


def intake(msg_id: str, **fields: Any) -> Intake:
    return Intake(
        **{
            "user": "alice",
            "event": b"event:" + msg_id.encode(),
            "message_id": msg_id,
            "backend": "chat",
            "work": WorkTemplate(b"work:", b"."),
            "lease_s": LEASE_S,
            **fields,
        }
    )


async def test_admit_takes_a_message_in_holding_its_key(h: Harness) -> None:
    s = h.store
    await s.append_event("alice", b"earlier")
    taken = await s.admit(intake("m1", key="k1", body_hash="h", hold_s=60))
    assert taken.taken and taken.seq == 2 and taken.inflight
    assert taken.dedup is not None and taken.dedup.status is DedupStatus.NEW
    assert taken.entity is None
    page = await s.events_after("alice", 1, 10)
    assert [(e.seq, e.body) for e in page.events] == [(2, b"event:m1")]
    # The in-flight record's body was made with the seq the log gave.
    h.clock.advance(LEASE_S + 1)
    assert await s.requeue_stale_inflight(10) == 1
    assert [m.body for m in await s.claim("chat", "c1", 10, 30)] == [b"work:2."]
    # Its key is held: a repeat is a replay (pending), another body a conflict.
    repeat = await s.admit(intake("m1", key="k1", body_hash="h", hold_s=60))
    assert not repeat.taken and repeat.dedup is not None and repeat.dedup.pending
    other = await s.admit(intake("m1", key="k1", body_hash="x", hold_s=60))
    assert other.dedup is not None and other.dedup.status is DedupStatus.CONFLICT
    assert await s.last_event_seq("alice") == 2  # neither was appended
    # Without a key, nothing is held.
    assert (await s.admit(intake("m2"))).seq == 3


async def test_admit_applies_entity_order(h: Harness) -> None:
    s = h.store
    first = await s.admit(
        intake("a1", key="ka1", body_hash="h", hold_s=60, entity="e", entity_seq=1)
    )
    assert first.taken and first.entity == EntityDecision(EntityVerdict.APPLY, 2)
    old = await s.admit(intake("a0", key="ka0", body_hash="h", hold_s=60, entity="e", entity_seq=1))
    assert not old.taken and old.entity is not None
    assert old.entity.verdict is EntityVerdict.DUPLICATE
    gap = await s.admit(intake("a3", key="ka3", body_hash="h", hold_s=60, entity="e", entity_seq=3))
    assert not gap.taken and gap.entity == EntityDecision(EntityVerdict.GAP, 2)
    # A gap holds no key: the same id is new once the gap is filled.
    assert (await s.admit(intake("a2", entity="e", entity_seq=2))).taken
    again = await s.admit(
        intake("a3", key="ka3", body_hash="h", hold_s=60, entity="e", entity_seq=3)
    )
    assert again.taken and again.dedup is not None and again.dedup.status is DedupStatus.NEW
    assert await s.last_event_seq("alice") == 3


class BrokenWork(WorkTemplate):
    def fill(self, seq: int) -> bytes:
        raise RuntimeError("no body")


async def test_sqlite_admit_undoes_its_steps_when_one_fails(sh: Harness) -> None:
    # Redis fills the template in its script (its steps cannot fail halfway).
    s = sh.store
    broken = BrokenWork(b"", b"")
    with pytest.raises(RuntimeError):
        await s.admit(
            intake("b1", key="kb1", body_hash="h", hold_s=60, entity="e", entity_seq=1, work=broken)
        )
    assert await s.last_event_seq("alice") == 0
    # The key and the entity seq were given back: the same message is taken in now.
    retried = await s.admit(
        intake("b1", key="kb1", body_hash="h", hold_s=60, entity="e", entity_seq=1)
    )
    assert retried.taken and retried.dedup is not None
    assert retried.dedup.status is DedupStatus.NEW
    assert retried.entity == EntityDecision(EntityVerdict.APPLY, 2)


OUTCOME = OutcomeTemplate(b"prefix", b"final")


async def test_complete_logs_the_final_reply_records_the_outcome_and_settles(h: Harness) -> None:
    s = h.store
    taken = await s.admit(intake("c1", key="kc1", body_hash="h", hold_s=60))
    seq = await s.complete(
        Completion(
            "alice",
            b"final",
            key="kc1",
            outcome=OUTCOME,
            ttl_s=600,
            inflight=taken.inflight,
        )
    )
    assert seq == taken.seq + 1
    page = await s.events_after("alice", taken.seq, 10)
    assert [(e.seq, e.body) for e in page.events] == [(seq, b"final")]
    assert await s.outcome("kc1") == OUTCOME.fill(seq)
    h.clock.advance(LEASE_S + 1)
    assert await s.requeue_stale_inflight(10) == 0  # settled: nothing to requeue
    h.clock.advance(600 - LEASE_S - 2)
    assert await s.outcome("kc1") is not None  # kept for ttl_s
    # Without a key or an in-flight record, it only logs.
    assert await s.complete(Completion("alice", b"event")) == seq + 1


def queued_work(**fields: Any) -> QueuedWork:
    message = message_pb2.Message(id="w1", role=message_pb2.ROLE_USER, seq=4)
    message.content.type = "text"
    message.content.text = "line one\nline two"
    message.context.entity = "list"
    return QueuedWork(
        **{
            "user": "alice",
            "client": "cert:laptop",
            "key": "5:alice:w1",
            "entity": "5:alice:list",
            "log_seq": 0,
            "message": message,
            **fields,
        }
    )


def reply(text: str, kind: str = "text") -> message_pb2.Message:
    out = message_pb2.Message(id=f"r-{text}", role=message_pb2.ROLE_ASSISTANT)
    out.content.type = kind
    out.content.text = text
    out.context.reply_to = "w1"
    out.timestamp.seconds = 1_700_000_000
    return out


@pytest.mark.parametrize("earlier", [0, 9, 127])
async def test_admit_gives_the_in_flight_body_its_log_seq(h: Harness, earlier: int) -> None:
    s = h.store
    for i in range(earlier):
        await s.append_event("alice", b"earlier %d" % i)
    traced = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", "tracestate": "v=1"}
    for n, work in enumerate([queued_work(), queued_work(key="", **traced)], 1):
        taken = await s.admit(intake(f"w{n}", work=work.template()))
        assert taken.seq == earlier + n
        assert await s.settle_inflight(taken.inflight, requeue=True)
        [queued] = await s.claim("chat", "c1", 10, 30)
        await s.ack("chat", queued.entry_id)
        expected = dataclasses.replace(work, log_seq=taken.seq)
        assert queued.body == expected.encode()
        assert QueuedWork.decode(queued.body) == expected


@pytest.mark.parametrize("earlier", [0, 126, 127])
async def test_complete_gives_the_outcome_the_final_reply_seq(h: Harness, earlier: int) -> None:
    s = h.store
    for i in range(earlier):
        await s.append_event("alice", b"earlier %d" % i)
    stored = queued_work(log_seq=earlier + 1).logged()
    taken = await s.admit(intake("w1", key="kw", body_hash="h", hold_s=60))
    before = [reply("delta", kind="delta"), reply("note")]
    final = reply("done")
    outcome = Outcome.template(stored, before, final)
    seq = await s.complete(
        Completion("alice", final.SerializeToString(), "kw", outcome, 600, taken.inflight)
    )
    assert seq == earlier + 2
    repeat = await s.remember("kw", "h", 60)
    assert repeat.status is DedupStatus.REPLAY and repeat.outcome == outcome.fill(seq)
    final.seq = seq
    assert Outcome.decode(repeat.outcome) == Outcome.of(stored, [*before, final])
    assert [m.seq for m in Outcome.decode(repeat.outcome).replies] == [0, seq]


async def test_a_key_expires_after_its_ttl(h: Harness) -> None:
    s = h.store
    await s.remember("m", "hash-a", 10)
    await s.record_outcome("m", b"out")
    h.clock.advance(9.9)
    assert (await s.remember("m", "hash-b", 10)).status is DedupStatus.CONFLICT
    h.clock.advance(0.1)  # live while now < expiry
    assert await s.outcome("m") is None
    fresh = await s.remember("m", "hash-b", 10)
    assert (fresh.status, fresh.outcome) == (DedupStatus.NEW, None)


async def test_a_pending_key_is_held_briefly_then_for_the_outcome_ttl(h: Harness) -> None:
    s = h.store
    await s.remember("crashed", "x", 5)  # its first delivery never records an outcome
    await s.remember("done", "x", 5)
    await s.record_outcome("done", b"out", ttl_s=100)
    h.clock.advance(6)
    assert (await s.remember("crashed", "x", 5)).status is DedupStatus.NEW
    assert (await s.remember("done", "x", 5)).outcome == b"out"
    await s.forget("done")
    assert (await s.remember("done", "y", 5)).status is DedupStatus.NEW
    await s.record_outcome("unknown", b"ignored")
    assert await s.outcome("unknown") is None


async def test_exactly_one_concurrent_remember_is_new(h: Harness) -> None:
    other = await h.second()
    stores = itertools.cycle([h.store, other])
    results = await asyncio.gather(*(next(stores).remember("k", "x", 60) for _ in range(20)))
    assert [r.status for r in results].count(DedupStatus.NEW) == 1


# -- per-entity order ---------------------------------------------------------------------
ENTITY_STEPS = [
    (2, EntityVerdict.GAP, 1),
    (1, EntityVerdict.APPLY, 2),
    (1, EntityVerdict.DUPLICATE, 2),
    (2, EntityVerdict.APPLY, 3),
    (5, EntityVerdict.GAP, 3),
    (3, EntityVerdict.APPLY, 4),
    (2, EntityVerdict.DUPLICATE, 4),
]


async def test_entity_seq_applies_in_order_exactly_once(h: Harness) -> None:
    for seq, verdict, expected in ENTITY_STEPS:
        decision = await h.store.apply_entity_seq("alice/task-1", seq)
        assert (decision.verdict, decision.expected) == (verdict, expected), seq
    assert (await h.store.apply_entity_seq("alice/task-2", 1)).verdict is EntityVerdict.APPLY
    with pytest.raises(ValueError):
        await h.store.apply_entity_seq("alice/task-1", 0)


async def test_exactly_one_concurrent_apply(h: Harness) -> None:
    other = await h.second()
    stores = itertools.cycle([h.store, other])
    results = await asyncio.gather(*(next(stores).apply_entity_seq("e", 1) for _ in range(20)))
    assert [r.verdict for r in results].count(EntityVerdict.APPLY) == 1


async def test_release_undoes_only_the_latest_apply(h: Harness) -> None:
    s = h.store
    for seq in (1, 2):
        assert (await s.apply_entity_seq("e", seq)).verdict is EntityVerdict.APPLY
    assert not await s.release_entity_seq("e", 1)  # 2 was applied on top: 1 stays
    assert await s.release_entity_seq("e", 2)
    assert not await s.release_entity_seq("e", 2)
    decision = await s.apply_entity_seq("e", 2)  # the retry of 2 applies again
    assert (decision.verdict, decision.expected) == (EntityVerdict.APPLY, 3)
    assert not await s.release_entity_seq("never-seen", 1)


# -- per-user event log -------------------------------------------------------------------
async def test_events_keep_order_and_resume_from_any_point(h: Harness) -> None:
    s = h.store
    assert await s.last_event_seq("alice") == 0
    empty = await s.events_after("alice", 0, 10)
    assert (empty.events, empty.reset, empty.first_seq, empty.last_seq) == ((), False, 1, 0)
    assert [await s.append_event("alice", b"m%d" % i) for i in range(1, 6)] == [1, 2, 3, 4, 5]
    assert await s.append_event("bob", b"other") == 1
    page = await s.events_after("alice", 2, 10)
    assert [(e.seq, e.body) for e in page.events] == [(3, b"m3"), (4, b"m4"), (5, b"m5")]
    assert all(e.at_s == START_S for e in page.events)
    assert [e.seq for e in (await s.events_after("alice", 0, 2)).events] == [1, 2]
    assert (await s.events_after("alice", 5, 10)).events == ()
    assert await s.last_event_seq("alice") == 5


async def test_trimming_by_size_reports_a_reset_never_silent_loss(h: Harness) -> None:
    s = h.store
    for i in range(1, 11):
        await s.append_event("u", b"%d" % i)
    assert await s.trim_events("u", max_len=4, max_age_s=3600) == 6
    page = await s.events_after("u", 6, 100)
    assert ([e.seq for e in page.events], page.reset, page.first_seq) == ([7, 8, 9, 10], False, 7)
    gone = await s.events_after("u", 3, 100)
    assert (gone.events, gone.reset, gone.first_seq, gone.last_seq) == ((), True, 7, 10)
    beyond = await s.events_after("u", 11, 100)  # a seq this log never gave
    assert beyond.reset
    assert await s.trim_events("u", max_len=4, max_age_s=3600) == 0


async def test_trimming_by_age_then_appending_continues_the_seq(h: Harness) -> None:
    s = h.store
    for i in range(1, 4):
        await s.append_event("u", b"old%d" % i)
    h.clock.advance(100)
    await s.append_event("u", b"young")
    assert await s.trim_events("u", max_len=100, max_age_s=50) == 3
    assert (await s.events_after("u", 3, 10)).events[0].body == b"young"
    assert (await s.events_after("u", 2, 10)).reset
    h.clock.advance(100)
    assert await s.trim_events("u", max_len=100, max_age_s=50) == 1
    emptied = await s.events_after("u", 4, 10)
    assert (emptied.events, emptied.reset, emptied.first_seq) == ((), False, 5)
    assert (await s.events_after("u", 3, 10)).reset
    assert await s.append_event("u", b"next") == 5  # seqs are never reused
    assert [e.seq for e in (await s.events_after("u", 4, 10)).events] == [5]


async def test_appends_that_need_no_fsync_of_their_own_keep_the_order(h: Harness) -> None:
    s = h.store
    seqs = [
        await s.append_event("alice", b"delta-1", durable=False),
        await s.append_event("alice", b"delta-2", durable=False),
        await s.append_event("alice", b"final"),
    ]
    assert seqs == [1, 2, 3]
    page = await s.events_after("alice", 0, 10)
    assert [e.body for e in page.events] == [b"delta-1", b"delta-2", b"final"]


async def test_concurrent_appenders_get_every_seq_once(h: Harness) -> None:
    other = await h.second()
    stores = itertools.cycle([h.store, other])
    seqs = await asyncio.gather(*(next(stores).append_event("u", b"%d" % i) for i in range(100)))
    assert sorted(seqs) == list(range(1, 101))
    page = await h.store.events_after("u", 0, 1000)
    assert [e.seq for e in page.events] == list(range(1, 101))
    assert {e.body: e.seq for e in page.events} == {b"%d" % i: seq for i, seq in enumerate(seqs)}


# -- durable inbound queue ----------------------------------------------------------------
async def test_claim_delivers_in_order_and_ack_removes(h: Harness) -> None:
    s = h.store
    ids = [await s.enqueue(f"m{i}", "chat", b"body%d" % i) for i in range(3)]
    await s.enqueue("t0", "tasks", b"task")
    first = await s.claim("chat", "c1", 2, min_idle_s=30)
    assert [(m.entry_id, m.message_id, m.body, m.attempts) for m in first] == [
        (ids[0], "m0", b"body0", 1),
        (ids[1], "m1", b"body1", 1),
    ]
    rest = await s.claim("chat", "c1", 10, min_idle_s=30)
    assert [m.message_id for m in rest] == ["m2"]
    for m in first + rest:
        await s.ack("chat", m.entry_id)
    await s.ack("chat", ids[0])  # idempotent
    assert await s.claim("chat", "c1", 10, min_idle_s=0) == []
    assert [m.backend for m in await s.claim("tasks", "c1", 10, 30)] == ["tasks"]
    assert await s.fail("chat", ids[0], "too late") == 0


async def test_concurrent_claims_never_share_an_entry(h: Harness) -> None:
    other = await h.second()
    for i in range(40):
        await h.store.enqueue(f"m{i}", "chat", b"x")
    batches = await asyncio.gather(
        *(s.claim("chat", f"c{i}", 7, 30) for i, s in enumerate([h.store, other] * 4))
    )
    claimed = [m.message_id for batch in batches for m in batch]
    assert sorted(claimed) == sorted(f"m{i}" for i in range(40))


async def test_a_dead_consumers_entry_is_reclaimed_after_min_idle(h: Harness) -> None:
    s = h.store
    await s.enqueue("m", "chat", b"x")
    [taken] = await s.claim("chat", "dead-consumer", 1, min_idle_s=0.2)
    assert await s.claim("chat", "live", 1, min_idle_s=0.2) == []
    h.clock.advance(1)  # SQLite's idle time; Redis measures its own
    [again] = await eventually(lambda: s.claim("chat", "live", 1, min_idle_s=0.2), "reclaim")
    assert (again.entry_id, again.message_id, again.attempts) == (taken.entry_id, "m", 2)


async def test_failures_retry_then_dead_letter_and_replay(h: Harness) -> None:
    s = h.store
    entry = await s.enqueue("m", "chat", b"body")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        [msg] = await s.claim("chat", "c", 1, min_idle_s=0)
        assert (msg.entry_id, msg.attempts) == (entry, attempt)
        assert await s.fail("chat", entry, f"boom {attempt}") == attempt
    assert await s.claim("chat", "c", 1, min_idle_s=0) == []
    [dead] = await s.dead_letters(10)
    assert (dead.message_id, dead.backend, dead.body) == ("m", "chat", b"body")
    assert (dead.attempts, dead.error, dead.dead_at_s) == (MAX_ATTEMPTS, "boom 3", START_S)
    assert await s.replay_dead_letter(dead.entry_id)
    assert not await s.replay_dead_letter(dead.entry_id)
    assert await s.dead_letters(10) == []
    [back] = await s.claim("chat", "c", 1, min_idle_s=0)
    assert (back.message_id, back.body, back.attempts) == ("m", b"body", 1)


async def test_a_failed_entry_is_retried_in_place_then_buried(h: Harness) -> None:
    s = h.store
    entry = await s.enqueue("m", "chat", b"body")
    assert len(await s.claim("chat", "c", 1, min_idle_s=30)) == 1
    for attempt in range(2, MAX_ATTEMPTS + 1):
        assert await s.fail("chat", entry, f"boom {attempt - 1}") == attempt - 1
        again = await s.retry("chat", entry, "c")
        assert again is not None
        assert (again.entry_id, again.message_id, again.body) == (entry, "m", b"body")
        assert again.attempts == attempt
        assert await s.claim("chat", "other", 1, min_idle_s=30) == []  # still held
    assert await s.fail("chat", entry, "last") == MAX_ATTEMPTS  # buried
    assert await s.retry("chat", entry, "c") is None
    [dead] = await s.dead_letters(10)
    assert (dead.attempts, dead.error) == (MAX_ATTEMPTS, "last")
    assert await s.retry("chat", "999999-0" if "-" in entry else "999999", "c") is None


async def test_an_inflight_message_is_forgotten_or_requeued_in_one_step(h: Harness) -> None:
    s = h.store
    done = await s.track_inflight("m1", "chat", b"one", lease_s=30)
    given_up = await s.track_inflight("m2", "chat", b"two", lease_s=30)
    assert await s.settle_inflight(done) == ""
    entry = await s.settle_inflight(given_up, requeue=True)
    assert entry
    assert await s.settle_inflight(given_up, requeue=True) == ""  # gone: no second entry
    [msg] = await s.claim("chat", "c", 10, min_idle_s=30)
    assert (msg.entry_id, msg.message_id, msg.body, msg.attempts) == (entry, "m2", b"two", 1)
    assert await s.requeue_stale_inflight(10) == 0


async def test_an_inflight_message_of_a_dead_gateway_is_requeued_after_its_lease(
    h: Harness,
) -> None:
    s = h.store
    stale = await s.track_inflight("m1", "tasks", b"one", lease_s=5)
    fresh = await s.track_inflight("m2", "tasks", b"two", lease_s=60)
    assert await s.requeue_stale_inflight(10) == 0
    h.clock.advance(6)
    assert await s.requeue_stale_inflight(10) == 1
    assert await s.requeue_stale_inflight(10) == 0
    assert await s.settle_inflight(stale) == ""  # its gateway came back too late: no-op
    [msg] = await s.claim("tasks", "c", 10, min_idle_s=30)
    assert (msg.message_id, msg.body) == ("m1", b"one")
    assert await s.settle_inflight(fresh) == ""
    h.clock.advance(120)
    assert await s.requeue_stale_inflight(10) == 0


async def test_an_inflight_message_survives_a_crash_of_the_store(h: Harness) -> None:
    await h.store.track_inflight("m1", "chat", b"one", lease_s=5)
    await h.crash_and_reopen()
    h.clock.advance(6)
    assert await h.store.requeue_stale_inflight(10) == 1
    [msg] = await h.store.claim("chat", "c", 10, min_idle_s=30)
    assert (msg.message_id, msg.body) == ("m1", b"one")


async def test_queue_depth_counts_what_is_not_acknowledged(h: Harness) -> None:
    s = h.store
    assert await s.queue_depth("chat") == 0
    first = await s.enqueue("a", "chat", b"x")
    await s.enqueue("b", "chat", b"x")
    await s.enqueue("c", "tasks", b"x")
    await s.claim("chat", "c", 1, min_idle_s=30)
    assert (await s.queue_depth("chat"), await s.queue_depth("tasks")) == (2, 1)
    await s.ack("chat", first)
    assert await s.queue_depth("chat") == 1


async def test_one_holder_delivers_a_queue_until_its_lease_lapses(h: Harness) -> None:
    other = await h.second()
    assert await h.store.hold_queue("chat", "a", 0.5)
    assert await h.store.hold_queue("chat", "a", 0.5)  # renewed
    assert not await other.hold_queue("chat", "b", 0.5)
    assert await other.hold_queue("tasks", "b", 0.5)  # another queue
    h.clock.advance(1)  # SQLite's lease; Redis expires the key on its own clock

    async def taken() -> bool:
        return await other.hold_queue("chat", "b", 0.5)

    await eventually(taken, "the lapsed lease taken over")
    assert not await h.store.hold_queue("chat", "a", 0.5)


async def test_deliveries_never_acknowledged_end_in_the_dead_letters(h: Harness) -> None:
    s = h.store
    await s.enqueue("m", "chat", b"body")
    [msg] = await s.claim("chat", "c", 1, min_idle_s=0)
    await s.fail("chat", msg.entry_id, "boom")
    for _ in range(MAX_ATTEMPTS - 1):  # each consumer dies holding it
        assert len(await s.claim("chat", "c", 1, min_idle_s=0)) == 1
    assert await s.claim("chat", "c", 1, min_idle_s=0) == []
    [dead] = await s.dead_letters(10)
    assert (dead.attempts, dead.error) == (MAX_ATTEMPTS, f"{NOT_ACKNOWLEDGED} (last error: boom)")


# -- limits -------------------------------------------------------------------------------
# (limit, window_s, [(now_s, expected retry-after or None)]), as gateway.ratelimit.SlidingWindow
RATE_CASES = [
    (3, 10.0, [(0.0, None), (1.0, None), (2.0, None), (3.0, 7.0)]),
    (2, 10.0, [(0.0, None), (5.0, None), (9.0, 1.0), (10.01, None)]),
    (2, 10.0, [(9.0, None), (9.5, None), (10.5, 8.5), (11.0, 8.0)]),
    (1, 10.0, [(0.0, None), (10.0, None)]),  # exactly one window old: expired
    (1, 10.0, [(0.0, None), (4.0, 6.0), (8.0, 2.0), (10.0, None)]),  # refusals not counted
    (1, 10.0, [(0.0, None), (9.9999, 0.001)]),  # the shortest wait
]


@pytest.mark.parametrize(("limit", "window_s", "steps"), RATE_CASES)
async def test_rate_window_edges(
    h: Harness, limit: int, window_s: float, steps: list[tuple[float, float | None]]
) -> None:
    for now_s, expected in steps:
        wait = await h.store.rate_acquire("alice", limit, window_s, START_S + now_s)
        assert wait == (None if expected is None else pytest.approx(expected)), now_s
    assert await h.store.rate_acquire("bob", limit, window_s, START_S + steps[-1][0]) is None


async def test_connection_counts(h: Harness) -> None:
    s = h.store
    assert [await s.conn_open("alice", 2) for _ in range(3)] == [True, True, False]
    assert await s.conn_open("bob", 2)
    assert (await s.conn_count("alice"), await s.conn_count("bob")) == (2, 1)
    await s.conn_close("alice")
    assert await s.conn_open("alice", 2)
    for _ in range(4):
        await s.conn_close("alice")
    assert await s.conn_count("alice") == 0  # never below zero
    assert await s.conn_open("alice", 1)


async def test_connection_counts_do_not_outlive_a_dead_owner(h: Harness) -> None:
    assert await h.store.conn_open("alice", 2)
    assert await h.store.conn_open("alice", 2)
    await h.owner_dies()
    assert await h.store.conn_count("alice") == 0
    assert [await h.store.conn_open("alice", 2) for _ in range(3)] == [True, True, False]


async def test_redis_connection_limit_is_shared_by_replicas(rh: Harness) -> None:
    other = await rh.second()
    assert await rh.store.conn_open("alice", 3)
    assert await other.conn_open("alice", 3)
    assert await rh.store.conn_open("alice", 3)
    assert not await other.conn_open("alice", 3)
    assert await other.conn_count("alice") == 3
    await other.close()  # a clean shutdown frees its counts at once
    rh.extra.remove(other)
    assert await rh.store.conn_count("alice") == 2


async def test_redis_keys_stay_under_the_prefix(rh: Harness) -> None:
    assert isinstance(rh, RedisHarness)
    s = rh.store
    await s.remember("k", "h", 60)
    await s.apply_entity_seq("e", 1)
    await s.append_event("u", b"x")
    await s.enqueue("m", "chat", b"x")
    await s.rate_acquire("r", 1, 1, START_S)
    await s.conn_open("u", 1)
    taken = await s.admit(intake("m"))
    await s.complete(Completion("alice", b"final", inflight=taken.inflight))
    client = Redis.from_url(rh.server.url)
    try:
        keys = {k.decode() async for k in client.scan_iter(match=f"{rh.prefix}*")}
        assert not [k for k in keys if k.endswith(":-")]  # placeholders, never touched
        assert {k.removeprefix(rh.prefix).split(":")[0] for k in keys} >= {
            "dedup", "entity", "events", "evseq", "queue", "rate", "conn", "replicas",
        }  # fmt: skip
        entries: Any = await client.xrange(f"{rh.prefix}events:u")
        assert [entry_id for entry_id, _ in entries] == [b"1-0"]
    finally:
        await client.aclose()


SEQS = [*range(300), 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35, 2**40, 2**49, 2**53]


async def test_redis_fills_templates_as_python_does(rh: Harness) -> None:
    assert isinstance(rh, RedisHarness)
    work = WorkTemplate(b'{"user": "a", "log_seq": ', b"}\n\x00\xff")
    outcome = OutcomeTemplate(b"\x0a\x02\x08\x01", b"\x0a\x01x" * 70)
    fill = (
        lua._FILL
        + """
local out = {}
for i = 3, #ARGV do
  local seq = tonumber(ARGV[i])
  table.insert(out, fill_work(ARGV[1], ARGV[2], seq))
  table.insert(out, fill_outcome(ARGV[1], ARGV[2], seq))
end
return out
"""
    )
    client = Redis.from_url(rh.server.url)
    try:
        for template, index in ((work, 0), (outcome, 1)):
            first, second = dataclasses.astuple(template)
            out: Any = await client.eval(fill, 0, first, second, *SEQS)
            assert out[index::2] == [template.fill(seq) for seq in SEQS]
    finally:
        await client.aclose()


async def test_redis_admit_and_complete_fill_seqs_past_one_byte(rh: Harness) -> None:
    assert isinstance(rh, RedisHarness)
    client = Redis.from_url(rh.server.url)
    try:
        for last in (16382, 2**40 - 2):
            await client.set(f"{rh.prefix}evseq:alice", last)
            work = queued_work()
            taken = await rh.store.admit(
                intake(f"m{last}", key=f"k{last}", body_hash="h", hold_s=60, work=work.template())
            )
            assert taken.seq == last + 1
            body = await client.hget(f"{rh.prefix}inflight:{taken.inflight}", "body")
            assert body == dataclasses.replace(work, log_seq=last + 1).encode()
            stored, final = work.logged(), reply("done")
            template = Outcome.template(stored, [], final)
            completion = Completion("alice", b"final", f"k{last}", template, 600, taken.inflight)
            assert await rh.store.complete(completion) == last + 2
            recorded = await rh.store.outcome(f"k{last}")
            assert recorded == template.fill(last + 2)
            final.seq = last + 2
            assert Outcome.decode(recorded) == Outcome.of(stored, [final])
    finally:
        await client.aclose()


# -- single-use tickets -------------------------------------------------------------------
async def test_a_ticket_is_taken_once(h: Harness) -> None:
    s = h.store
    assert await s.ticket_put("t1", b"identity-1", 30)
    assert not await s.ticket_put("t1", b"someone else", 30)  # outstanding: kept as it was
    assert await s.ticket_take("unknown") is None
    assert await s.ticket_take("t1") == b"identity-1"
    assert await s.ticket_take("t1") is None
    assert await s.ticket_put("t1", b"identity-2", 30)  # taken: the name is free again
    assert await s.ticket_take("t1") == b"identity-2"


async def test_a_ticket_expires_after_its_ttl(h: Harness) -> None:
    s = h.store
    assert await s.ticket_put("short", b"a", 5)
    assert await s.ticket_put("long", b"b", 30)
    h.clock.advance(5)
    assert await s.ticket_take("short") is None
    assert await s.ticket_take("long") == b"b"
    with pytest.raises(ValueError):
        await s.ticket_put("never", b"c", 0)


async def test_exactly_one_concurrent_take_gets_a_ticket(h: Harness) -> None:
    assert await h.store.ticket_put("contended", b"once", 30)
    takers = [h.store, await h.second()] if isinstance(h, RedisHarness) else [h.store] * 2
    taken = await asyncio.gather(*(takers[i % 2].ticket_take("contended") for i in range(20)))
    assert sorted(taken, key=lambda v: v is None) == [b"once"] + [None] * 19


async def test_redis_ticket_is_redeemed_on_another_replica(rh: Harness) -> None:
    other = await rh.second()
    assert await rh.store.ticket_put("shared", b"who", 30)
    assert await other.ticket_take("shared") == b"who"
    assert await rh.store.ticket_take("shared") is None
    assert isinstance(rh, RedisHarness)
    client = Redis.from_url(rh.server.url)
    try:
        assert await rh.store.ticket_put("forgotten", b"x", 2)
        ttl_ms = await client.pttl(f"{rh.prefix}ticket:forgotten")
        assert 0 < ttl_ms <= 3000  # Redis forgets it: outstanding tickets stay bounded
    finally:
        await client.aclose()


async def test_sqlite_tickets_are_bounded(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / DB_NAME)
    try:
        book = store._tickets
        book.max_tickets = 3
        assert [await store.ticket_put(f"t{i}", b"x", 30) for i in range(4)] == [
            True, True, True, False,
        ]  # fmt: skip
        assert await store.ticket_take("t0") == b"x"
        assert await store.ticket_put("t3", b"x", 30)
    finally:
        await store.close()


# -- durability and lifecycle -------------------------------------------------------------
async def test_everything_acknowledged_survives_a_crash(h: Harness) -> None:
    s = h.store
    await s.remember("m1", "hash", 3600)
    await s.record_outcome("m1", b"outcome")
    await s.apply_entity_seq("e", 1)
    for i in range(3):
        await s.append_event("u", b"%d" % i)
    held = await s.enqueue("held", "chat", b"held")
    await s.claim("chat", "c", 1, min_idle_s=0)  # delivered, never acknowledged
    await s.enqueue("waiting", "chat", b"waiting")
    buried = await s.enqueue("buried", "tasks", b"buried")
    for _ in range(MAX_ATTEMPTS):
        await s.claim("tasks", "c", 1, 0)
        await s.fail("tasks", buried, "boom")

    await h.crash_and_reopen()
    s = h.store
    replay = await s.remember("m1", "hash", 3600)
    assert (replay.status, replay.outcome) == (DedupStatus.REPLAY, b"outcome")
    assert (await s.apply_entity_seq("e", 1)).verdict is EntityVerdict.DUPLICATE
    assert [e.body for e in (await s.events_after("u", 0, 10)).events] == [b"0", b"1", b"2"]
    assert await s.append_event("u", b"3") == 4
    claimed = await s.claim("chat", "c2", 10, min_idle_s=0)
    assert [(m.message_id, m.attempts) for m in claimed] == [("held", 2), ("waiting", 1)]
    assert claimed[0].entry_id == held
    assert [d.message_id for d in await s.dead_letters(10)] == ["buried"]


async def test_ping_and_close(h: Harness) -> None:
    assert await h.store.ping()
    await h.store.close()
    assert not await h.store.ping()
    await h.store.close()  # idempotent


async def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / DB_NAME)
    await store.append_event("u", b"x")
    await store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


async def test_redis_notices_reach_the_other_replicas_only(rh: Harness) -> None:
    other = await rh.second()
    notices = other.watch_events()
    own = rh.store.watch_events()
    first = asyncio.ensure_future(anext(notices))
    own_first = asyncio.ensure_future(anext(own))
    try:
        # The watcher subscribes on its first step: append until a notice arrives.
        async with asyncio.timeout(10):
            while not first.done():
                seq = await rh.store.append_event("alice", b"x")
                await asyncio.sleep(0.05)
        user, noticed = first.result()
        assert user == "alice" and 1 <= noticed <= seq
        seq = await other.append_event("bob smith", b"y")  # a space in a user name
        async with asyncio.timeout(10):
            assert await own_first == ("bob smith", seq)
    finally:
        for task in (first, own_first):
            task.cancel()
        await asyncio.gather(first, own_first, return_exceptions=True)
        await notices.aclose()
        await own.aclose()


# -- Redis connections ---------------------------------------------------------------------
async def test_more_concurrent_commands_than_connections_wait_for_one(
    rh: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import redis as redis_store

    monkeypatch.setattr(redis_store, "MAX_CONNECTIONS", 3)
    store = await rh.open()  # a pool of 3 connections
    rh.extra.append(store)
    seqs = await asyncio.gather(*(store.append_event("burst", b"x") for _ in range(60)))
    assert sorted(seqs) == list(range(1, 61))
