"""Per-user event streams over a real store: SQLite in tmp_path, and Redis on this
module's own redis-server, where two hubs stand for two gateway replicas.

A subscription yields every event after its starting point exactly once and in seq
order: when appends finish out of order, when it reads slower than its buffer holds,
when it resumes, and when the events come from another replica."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dialog.v1 import message_pb2
from gateway.events import EventHub, Subscription
from gateway.store import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import DB_NAME, SQLiteStore
from tests.support.redis_server import RedisServer, running_redis

WAIT_S = 10.0


def text(body: str) -> message_pb2.Message:
    msg = message_pb2.Message(role=message_pb2.ROLE_ASSISTANT)
    msg.content.type = "text"
    msg.content.text = body
    return msg


def hub(store: Store, buffer_max: int = 64, log_max_len: int = 1000) -> EventHub:
    return EventHub(store, buffer_max=buffer_max, log_max_len=log_max_len, log_max_age_s=3600)


async def take(sub: Subscription, count: int) -> list[message_pb2.Message]:
    async with asyncio.timeout(WAIT_S):
        return [m for _ in range(count) if (m := await sub.next()) is not None]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened: Store = await SQLiteStore.open(tmp_path / DB_NAME)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = await RedisStore.connect(server.url, prefix=f"hub-{uuid.uuid4().hex[:8]}:")
    yield opened
    await opened.close()


async def test_concurrent_appends_reach_a_subscriber_once_and_in_order(store: Store) -> None:
    h = hub(store)
    sub = await h.subscribe("alice")
    await asyncio.gather(*(h.publish("alice", text(f"m{i}")) for i in range(40)))
    got = await take(sub, 40)
    assert [m.seq for m in got] == list(range(1, 41))
    assert sorted(m.content.text for m in got) == sorted(f"m{i}" for i in range(40))
    assert await sub.next(timeout_s=0.05) is None  # nothing more, and no duplicate


async def test_a_slow_reader_catches_up_from_the_log(store: Store) -> None:
    h = hub(store, buffer_max=2)
    sub = await h.subscribe("alice")
    for i in range(30):
        await h.publish("alice", text(f"m{i}"))
    got = await take(sub, 30)
    assert [m.content.text for m in got] == [f"m{i}" for i in range(30)]
    assert [m.seq for m in got] == list(range(1, 31))


async def test_a_resume_gets_exactly_what_came_after(store: Store) -> None:
    h = hub(store)
    for i in range(10):
        await h.publish("alice", text(f"m{i}"))
    sub = await h.subscribe("alice", after_seq=6)
    await h.publish("alice", text("live"))
    got = await take(sub, 4)
    assert [(m.seq, m.content.text) for m in got] == [(7, "m6"), (8, "m7"), (9, "m8"), (10, "m9")]
    [live] = await take(sub, 1)
    assert (live.seq, live.content.text) == (11, "live")


async def test_without_a_resume_point_only_new_events_come(store: Store) -> None:
    h = hub(store)
    await h.publish("alice", text("old"))
    sub = await h.subscribe("alice")
    await h.publish("bob", text("not alice's"))
    await h.publish("alice", text("new"))
    [msg] = await take(sub, 1)
    assert (msg.seq, msg.content.text) == (2, "new")


async def test_a_resume_from_a_trimmed_point_starts_with_a_reset(store: Store) -> None:
    h = hub(store, log_max_len=5)
    for i in range(20):
        await h.publish("alice", text(f"m{i}"))
    sub = await h.subscribe("alice", after_seq=3)  # trims to the last 5 first
    await h.publish("alice", text("after"))
    reset, after = await take(sub, 2)
    assert reset.content.type == "reset"
    assert reset.content.data["last_seq"] == 20
    assert (after.seq, after.content.text) == (21, "after")


async def test_a_resume_beyond_the_log_is_a_reset_too(store: Store) -> None:
    h = hub(store)
    await h.publish("alice", text("only"))
    sub = await h.subscribe("alice", after_seq=99)  # a seq this log never gave
    [reset] = await take(sub, 1)
    assert reset.content.type == "reset"


async def test_events_of_one_replica_reach_subscribers_of_another(
    redis_server: RedisServer,
) -> None:
    prefix = f"hub-{uuid.uuid4().hex[:8]}:"
    stores = [await RedisStore.connect(redis_server.url, prefix=prefix) for _ in range(2)]
    a, b = hub(stores[0]), hub(stores[1])
    b.start()  # b listens for a's appends
    try:
        sub = await b.subscribe("alice")
        # The notice channel is subscribed asynchronously: publish until b hears one.
        async with asyncio.timeout(WAIT_S):
            while await sub.next(timeout_s=0.05) is None:
                await a.publish("alice", text("warm-up"))
        first = (await a.publish("alice", text("x0"))).seq
        for i in range(1, 20):
            await a.publish("alice", text(f"x{i}"))
        got: list[message_pb2.Message] = []
        async with asyncio.timeout(WAIT_S):
            while len(got) < 20:
                msg = await sub.next()
                if msg is not None and msg.content.text.startswith("x"):
                    got.append(msg)
        assert [m.content.text for m in got] == [f"x{i}" for i in range(20)]
        assert [m.seq for m in got] == list(range(first, first + 20))
    finally:
        await b.close()
        for s in stores:
            await s.close()
