"""The ``Drain`` (gateway.lifecycle) on a real event loop, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.errors import Draining
from gateway.lifecycle import NEXT_PHASE, REFUSED, UNFINISHED, Drain, Phase, close_margin_s

TIMEOUT_S = 0.4  # a work deadline of 0.3 s after begin


async def replies(*items: str, stall: bool = False) -> AsyncIterator[str]:
    for item in items:
        yield item
    if stall:
        await asyncio.Event().wait()


def test_phases_only_move_forward() -> None:
    assert [NEXT_PHASE[p] for p in Phase] == [Phase.DRAINING, Phase.CLOSING, None]
    assert close_margin_s(20) == 2.0 and close_margin_s(2) == 0.5
    with pytest.raises(ValueError):
        Drain(0)


async def test_new_work_is_refused_once_the_drain_begins() -> None:
    drain = Drain(TIMEOUT_S)
    drain.check()
    drain.begin()
    drain.begin()  # a second signal changes nothing
    with pytest.raises(Draining) as refused:
        drain.check()
    assert (refused.value.message, refused.value.code, refused.value.retry_after_s) == (
        REFUSED,
        "draining",
        1,
    )
    assert drain.phase is Phase.DRAINING


async def test_work_in_flight_finishes_then_the_drain_closes() -> None:
    drain = Drain(TIMEOUT_S)
    answer = drain.bounded(replies("delta", "final"))
    assert await anext(answer) == "delta"
    drain.begin()
    settled = asyncio.create_task(drain.settle())
    await asyncio.sleep(0)
    assert not settled.done()  # a message is in flight
    assert [item async for item in answer] == ["final"]
    await settled
    assert drain.phase is Phase.CLOSING


async def test_work_still_waiting_at_the_deadline_is_cancelled_with_an_error() -> None:
    drain = Drain(TIMEOUT_S)
    answer = drain.bounded(replies("delta", stall=True))
    assert await anext(answer) == "delta"
    asyncio.get_running_loop().call_soon(drain.begin)
    with pytest.raises(Draining) as cut:
        await anext(answer)
    assert cut.value.message == UNFINISHED
    await drain.settle()  # the cancelled message no longer counts as in flight
    assert drain.phase is Phase.CLOSING


async def test_waits_on_clients_end_when_the_drain_closes() -> None:
    drain = Drain(TIMEOUT_S)
    assert await drain.before(Phase.CLOSING, asyncio.sleep(0, "frame")) == "frame"
    frames: asyncio.Queue[str] = asyncio.Queue()
    waiting = asyncio.create_task(drain.before(Phase.CLOSING, frames.get()))
    stream = asyncio.create_task(_collect(drain.until(Phase.CLOSING, _from(frames))))
    await asyncio.sleep(0)
    drain.begin()
    await drain.settle()
    assert await waiting is Phase.CLOSING
    assert await stream == []
    # Once closing, a wait that has to suspend ends at once.
    assert await drain.before(Phase.CLOSING, frames.get()) is Phase.CLOSING


async def test_the_listeners_wait_for_open_connections() -> None:
    drain = Drain(TIMEOUT_S)
    drain.begin()
    with drain.connection():
        closed = asyncio.create_task(drain.connections_closed())
        await asyncio.sleep(0)
        assert not closed.done()
    await closed
    assert 0 < drain.remaining_s() <= TIMEOUT_S


async def _from(queue: asyncio.Queue[str]) -> AsyncIterator[str]:
    while True:
        yield await queue.get()


async def _collect(items: AsyncIterator[str]) -> list[str]:
    return [item async for item in items]
