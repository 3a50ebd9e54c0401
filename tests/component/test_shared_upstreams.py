"""``SharedUpstreams``: one user's requests share back-end streams; idle ones are closed
past the bound (least recently used first) or after ``idle_s``; busy ones never."""

from __future__ import annotations

from typing import cast

from gateway.forwarding import SharedUpstreams, Upstreams
from gateway.upstream import BackendPool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Opened:
    """Upstreams as the factory made them (no back-end is called: none is used)."""

    def __init__(self) -> None:
        self.made: list[Upstreams] = []

    def __call__(self, user: str, client: str) -> Upstreams:
        upstreams = Upstreams(cast(BackendPool, None), user, client=client, reply_queue_max=4)
        self.made.append(upstreams)
        return upstreams


async def test_one_users_requests_share_upstreams_and_users_do_not() -> None:
    opened = Opened()
    shared = SharedUpstreams(opened, max_users=8, idle_s=60)
    async with shared.lease("alice") as first, shared.lease("alice") as second:
        assert first is second
    async with shared.lease("alice") as third, shared.lease("bob") as bobs:
        assert third is first and bobs is not first
    async with shared.lease("alice", "cert-a") as with_cert:
        assert with_cert is not first  # another client certificate: other streams
    assert len(opened.made) == 3 and len(shared) == 3


async def test_idle_upstreams_past_the_bound_are_closed_least_recently_used_first() -> None:
    clock = Clock()
    opened = Opened()
    shared = SharedUpstreams(opened, max_users=2, idle_s=60, clock=clock)
    for user in ("a", "b", "c"):
        clock.now += 1
        async with shared.lease(user):
            pass
    assert len(shared) == 2
    clock.now += 1
    async with shared.lease("b") as b:
        assert b is opened.made[1]  # kept
    async with shared.lease("a") as a:
        assert a is not opened.made[0]  # "a" was the oldest: closed, opened again


async def test_upstreams_in_use_are_never_closed() -> None:
    clock = Clock()
    opened = Opened()
    shared = SharedUpstreams(opened, max_users=1, idle_s=1, clock=clock)
    async with shared.lease("busy") as busy:
        for user in ("x", "y", "z"):
            clock.now += 5
            async with shared.lease(user):
                pass
        assert len(shared) == 1  # only "busy": each idle one went over the bound
        async with shared.lease("busy") as again:
            assert again is busy
    clock.now += 5
    async with shared.lease("new"):
        pass
    assert len(shared) == 1


async def test_upstreams_idle_too_long_are_closed() -> None:
    clock = Clock()
    opened = Opened()
    shared = SharedUpstreams(opened, max_users=100, idle_s=30, clock=clock)
    async with shared.lease("old"):
        pass
    clock.now += 31
    async with shared.lease("fresh"):
        pass
    assert len(shared) == 1
    async with shared.lease("old") as old:
        assert old is not opened.made[0]
    await shared.aclose()
    assert len(shared) == 0
