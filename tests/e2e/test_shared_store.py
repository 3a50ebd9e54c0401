"""Two gateway replicas sharing one Redis (REDIS_URL): a message id seen by one replica is
replayed by the other, never forwarded twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import RedisServer, running_redis
from tests.support.stack import Stack, free_port


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer
) -> Iterator[tuple[Stack, Stack]]:
    first = Stack.create(Path(tmp_path_factory.mktemp("replicas")))
    second = Stack(first.workdir, secret=first.secret, ports={**first.ports})
    second.ports.update(http=free_port(), grpc=free_port())
    try:
        first.start_backends()
        first.start_gateway(REDIS_URL=redis.url)
        second.start_gateway(REDIS_URL=redis.url, DATA_DIR="data-second")
        yield first, second
    finally:
        second.stop()
        first.stop()


def post(stack: Stack, token: str, body: dict[str, object]) -> httpx.Response:
    with httpx.Client(verify=stack.ssl_context(), timeout=30) as c:
        return c.post(
            f"{stack.base_url}/messages", json=body, headers={"Authorization": f"Bearer {token}"}
        )


def test_a_repeat_on_another_replica_is_a_replay(replicas: tuple[Stack, Stack]) -> None:
    first, second = replicas
    token = first.token("shared-user")
    create = {
        "id": "shared-create",
        "content": {"type": "task.create", "text": "exactly once"},
        "context": {"service": "tasks"},
    }
    original = post(first, token, create)
    repeat = post(second, token, create)
    assert original.status_code == repeat.status_code == 200
    assert repeat.headers["idempotent-replayed"] == "true"
    assert repeat.json() == original.json()
    listing = post(
        second, token, {"content": {"type": "task.list"}, "context": {"service": "tasks"}}
    )
    titles = [t["title"] for t in listing.json()["replies"][-1]["content"]["data"]["tasks"]]
    assert titles == ["exactly once"]


def test_a_conflict_is_seen_across_replicas(replicas: tuple[Stack, Stack]) -> None:
    first, second = replicas
    token = first.token("conflict-user")
    assert (
        post(first, token, {"id": "x", "content": {"type": "text", "text": "a"}}).status_code == 200
    )
    r = post(second, token, {"id": "x", "content": {"type": "text", "text": "b"}})
    assert r.status_code == 409
