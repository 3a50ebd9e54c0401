"""gateway.consul against the stand-in Consul server (tests/fakes/consul_server.py):
Consul itself cannot run on the build machine."""

from __future__ import annotations

import asyncio

from gateway.consul import ConsulDiscovery
from tests.fakes.consul_server import running_consul

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
