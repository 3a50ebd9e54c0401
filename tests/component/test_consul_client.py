"""gateway.consul against the stand-in Consul server (tests/fakes/consul_server.py):
Consul itself cannot run on the build machine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.consul import ConsulDiscovery
from tests.fakes.consul_server import FakeConsul, running_consul

A = ("127.0.0.1", 50061, "passing")
B = ("127.0.0.1", 50071, "passing")


async def test_blocking_queries_follow_the_healthy_instances() -> None:
    with running_consul(token="t0ken") as (consul, url):
        consul.set_instances("chat", [B, A, ("127.0.0.1", 50081, "critical")])
        discovery = ConsulDiscovery(url, {"chat-backend": "chat"}, token="t0ken", wait_s=1)
        assert await discovery.first() == {"chat-backend": ("127.0.0.1:50061", "127.0.0.1:50071")}
        seen: asyncio.Queue[tuple[str, tuple[str, ...]]] = asyncio.Queue(10)
        task = asyncio.create_task(discovery.run(lambda b, a: seen.put_nowait((b, a))))
        try:
            consul.set_instances("chat", [A])
            got = await asyncio.wait_for(seen.get(), 5)
            assert got == ("chat-backend", ("127.0.0.1:50061",))
            # No healthy instance: the last known set stays, nothing is reported.
            consul.set_instances("chat", [("127.0.0.1", 50061, "critical")])
            consul.set_instances("chat", [A, B])
            got = await asyncio.wait_for(seen.get(), 5)
            assert got == ("chat-backend", ("127.0.0.1:50061", "127.0.0.1:50071"))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        queries = [r for r in consul.requests if r["path"] == ["/v1/health/service/chat"]]
        assert all(r["passing"] == ["true"] and r["wait"] == ["1s"] for r in queries)
        assert any(int(r["index"][0]) > 1 for r in queries)


async def test_a_refused_token_is_retried_and_nothing_is_found() -> None:
    with running_consul(token="right") as (consul, url):
        consul.set_instances("chat", [A])
        discovery = ConsulDiscovery(url, {"chat": "chat"}, token="wrong", wait_s=1)
        assert await discovery.first() == {}


def queries(consul: FakeConsul, service: str) -> int:
    return sum(r["path"] == [f"/v1/health/service/{service}"] for r in list(consul.requests))


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Until ``predicate()`` holds, checked every few milliseconds, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_follow_starts_and_stops_loops_while_running() -> None:
    with running_consul() as (consul, url):
        consul.set_instances("chat", [A])
        consul.set_instances("spare", [B])
        discovery = ConsulDiscovery(url, {}, wait_s=1)
        seen: asyncio.Queue[tuple[str, tuple[str, ...]]] = asyncio.Queue(10)
        task = asyncio.create_task(discovery.run(lambda b, a: seen.put_nowait((b, a))))
        try:
            # Nothing followed yet: run waits for ``follow``, asking nothing.
            assert discovery.follow({"chat-backend": "chat"}) == ()
            got = await asyncio.wait_for(seen.get(), 5)
            assert got == ("chat-backend", ("127.0.0.1:50061",))

            # Added: its first (non-blocking) query answers at once.
            assert discovery.follow({"chat-backend": "chat", "spare": "spare"}) == ()
            got = await asyncio.wait_for(seen.get(), 5)
            assert got == ("spare", ("127.0.0.1:50071",))
            assert discovery.services == {"chat-backend": "chat", "spare": "spare"}

            # Another service for a back-end: what the old one found is forgotten.
            assert discovery.follow({"chat-backend": "chat", "spare": "chat"}) == ("spare",)
            got = await asyncio.wait_for(seen.get(), 5)
            assert got == ("spare", ("127.0.0.1:50061",))

            # Removed: its loop stops, no more queries. Chat's blocking queries, one a
            # second, show that time passes.
            assert discovery.follow({"chat-backend": "chat"}) == ("spare",)
            assert "spare" not in discovery.addresses
            spare_queries = queries(consul, "spare")
            chat_queries = queries(consul, "chat")
            await until(lambda: queries(consul, "chat") >= chat_queries + 2, "two cycles")
            assert queries(consul, "spare") == spare_queries
            # Whatever happens to a service no longer followed, nothing is reported.
            consul.set_instances("spare", [A, B])
            consul.set_instances("chat", [A, B])
            got = await asyncio.wait_for(seen.get(), 5)
            assert got == ("chat-backend", ("127.0.0.1:50061", "127.0.0.1:50071"))
            assert seen.empty()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_follow_before_run_only_changes_what_run_follows() -> None:
    with running_consul() as (consul, url):
        consul.set_instances("chat", [A])
        discovery = ConsulDiscovery(url, {"old": "chat"}, wait_s=1)
        assert await discovery.first() == {"old": ("127.0.0.1:50061",)}
        assert discovery.follow({"new": "chat"}) == ("old",)
        assert discovery.addresses == {}
        seen: asyncio.Queue[tuple[str, tuple[str, ...]]] = asyncio.Queue(10)
        task = asyncio.create_task(discovery.run(lambda b, a: seen.put_nowait((b, a))))
        try:
            assert await asyncio.wait_for(seen.get(), 5) == ("new", ("127.0.0.1:50061",))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
