"""The queue workers follow the back-ends of a configuration reload (``Redelivery.follow``),
on a real SQLite store: a queue filled while its back-end was not configured is delivered
once a reload adds it; a back-end removed loses its worker, and its queue stays."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dialog.v1 import message_pb2
from gateway.config import GatewayConfig
from gateway.delivery import QueuedWork
from gateway.errors import DialogError
from gateway.redelivery import Redelivery
from gateway.store import Store
from gateway.store.connect import connect_store

TIMEOUTS_S = {"chat": 1.0}


def work(msg_id: str) -> QueuedWork:
    message = message_pb2.Message(id=msg_id, role=message_pb2.ROLE_USER)
    message.content.type = "text"
    message.content.text = msg_id
    return QueuedWork(
        user="alice", client="", key=f"alice:{msg_id}", entity="", log_seq=0, message=message
    )


def workers() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("redelivery-")}


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await connect_store(data_dir=tmp_path, max_attempts=5)
    yield store
    await store.close()


@pytest.fixture
async def delivered(store: Store) -> AsyncIterator[tuple[Redelivery, list[tuple[str, str]]]]:
    """A started ``Redelivery`` for back-end ``chat``, and what it delivered, in order."""
    seen: list[tuple[str, str]] = []

    async def deliver(backend: str, queued: QueuedWork) -> None:
        seen.append((backend, queued.message.id))

    async def dead(queued: QueuedWork, exc: DialogError) -> None:
        raise AssertionError(f"{queued.message.id} buried: {exc}")

    redelivery = Redelivery(
        store,
        GatewayConfig(),
        consumer="replica-1",
        timeouts_s=TIMEOUTS_S,
        deliver=deliver,
        dead=dead,
        accepting=lambda backend: True,
    )
    redelivery.start()
    yield redelivery, seen
    await redelivery.close()


async def test_a_queue_filled_while_unconfigured_is_delivered_once_a_reload_adds_it(
    store: Store, delivered: tuple[Redelivery, list[tuple[str, str]]]
) -> None:
    redelivery, seen = delivered
    sent = ["s1", "s2", "s3"]
    for msg_id in sent:
        await store.enqueue(msg_id, "spare", work(msg_id).encode())
    assert workers() == {"redelivery-chat", "redelivery-sweep"}

    await redelivery.follow({**TIMEOUTS_S, "spare": 1.0})
    assert "redelivery-spare" in workers()
    await until(lambda: len(seen) == len(sent), "the queued messages delivered")
    assert seen == [("spare", msg_id) for msg_id in sent]
    assert await store.queue_depth("spare") == 0


async def test_a_removed_backend_loses_its_worker_and_keeps_its_queue(
    store: Store, delivered: tuple[Redelivery, list[tuple[str, str]]]
) -> None:
    redelivery, seen = delivered
    await redelivery.follow({**TIMEOUTS_S, "spare": 1.0})
    await redelivery.follow(TIMEOUTS_S)
    assert workers() == {"redelivery-chat", "redelivery-sweep"}

    await store.enqueue("kept", "spare", work("kept").encode())
    redelivery.wake("spare")  # nothing follows it: nothing happens
    await store.enqueue("c1", "chat", work("c1").encode())
    redelivery.wake("chat")
    await until(lambda: ("chat", "c1") in seen, "chat's message delivered")
    assert ("spare", "kept") not in seen
    assert await store.queue_depth("spare") == 1

    # Added again: the queue kept in the store is delivered.
    await redelivery.follow({**TIMEOUTS_S, "spare": 1.0})
    await until(lambda: ("spare", "kept") in seen, "the kept message delivered")


async def test_follow_before_start_only_changes_what_start_starts(store: Store) -> None:
    async def deliver(backend: str, queued: QueuedWork) -> None:
        pass

    async def dead(queued: QueuedWork, exc: DialogError) -> None:
        pass

    redelivery = Redelivery(
        store,
        GatewayConfig(),
        consumer="replica-2",
        timeouts_s=TIMEOUTS_S,
        deliver=deliver,
        dead=dead,
        accepting=lambda backend: True,
    )
    await redelivery.follow({"tasks": 2.0})
    assert workers() == set()
    redelivery.start()
    try:
        assert workers() == {"redelivery-tasks", "redelivery-sweep"}
    finally:
        await redelivery.close()
    await until(lambda: not workers(), "the workers stopped")
