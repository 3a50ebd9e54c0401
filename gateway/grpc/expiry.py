"""Streams and calls that end when the caller's token does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from gateway.errors import Unauthenticated
from gateway.lifecycle import Drain

T = TypeVar("T")


async def until_expiry(items: AsyncIterator[T], deadline: float) -> AsyncIterator[T]:
    """``items`` until ``deadline`` (event-loop time: the token's expiry); then
    ``Unauthenticated``. The deadline guards only the wait for the next item, never a
    ``yield``, so that it cannot cancel the caller while it writes."""
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                item = await anext(items)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise Unauthenticated("token expired") from None
        yield item


async def one_answer(call: Awaitable[T], drain: Drain, expiry: float) -> T:
    """``call``'s result, awaited as one unit of work in flight for ``drain`` (cancelled at
    its work deadline: ``Draining``) and until ``expiry``, the token's, in loop time
    (``Unauthenticated``)."""
    expiring = asyncio.timeout_at(expiry)
    try:
        async with expiring, drain.work():
            return await call
    except TimeoutError:
        if expiring.expired():
            raise Unauthenticated("token expired") from None
        raise
