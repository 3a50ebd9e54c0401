"""Per-user event streams: every message delivered to a user, fanned out to
that user's subscribers (``/events/stream``, ``Gateway.Subscribe``).

Each subscriber has a bounded queue. A subscriber that falls behind by more
than the bound is ended with ``Overloaded`` instead of silently losing events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dialog.v1 import message_pb2
from gateway.errors import Overloaded
from gateway.eventlog import EventLog

LOG_MAX_LEN = 1000


class Subscription:
    """One subscriber's queue of delivered messages."""

    def __init__(self, queue_max: int):
        self._queue: asyncio.Queue[message_pb2.Message | None] = asyncio.Queue(queue_max + 1)
        self._queue_max = queue_max
        self.overflowed = False

    def offer(self, msg: message_pb2.Message) -> None:
        if self.overflowed:
            return
        if self._queue.qsize() >= self._queue_max:
            self.overflowed = True
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(msg)

    async def next(self, timeout_s: float | None = None) -> message_pb2.Message | None:
        """The next message, or ``None`` when none came within ``timeout_s``.

        Raises ``Overloaded`` once the subscriber has fallen too far behind."""
        try:
            msg = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        if msg is None:
            raise Overloaded("event stream fell too far behind; reconnect with the last seq")
        return msg

    async def __aiter__(self) -> AsyncIterator[message_pb2.Message]:
        while (msg := await self.next()) is not None:
            yield msg


class EventHub:
    """In-memory event logs and subscribers, keyed by user."""

    def __init__(self, *, queue_max: int, log_max_len: int = LOG_MAX_LEN):
        self._queue_max = queue_max
        self._log_max_len = log_max_len
        self._logs: dict[str, EventLog] = {}
        self._subscribers: dict[str, set[Subscription]] = {}

    def publish(self, user: str, msg: message_pb2.Message) -> message_pb2.Message:
        """Give ``msg`` the user's next seq, keep it, and deliver it to every subscriber."""
        log = self._logs.setdefault(user, EventLog(self._log_max_len))
        log.append(msg)
        for sub in self._subscribers.get(user, ()):
            sub.offer(msg)
        return msg

    def subscribe(self, user: str, after_seq: int = 0) -> tuple[Subscription, bool]:
        """Open a subscription; replay what came after ``after_seq`` when given.

        Returns the subscription and ``False`` when part of the requested history
        was already trimmed (the caller must tell the client: a reset).
        """
        log = self._logs.get(user)
        backlog = log.since(after_seq) if log and after_seq else []
        sub = Subscription(self._queue_max + len(backlog or ()))
        for msg in backlog or ():
            sub.offer(msg)
        self._subscribers.setdefault(user, set()).add(sub)
        return sub, backlog is not None

    def last_seq(self, user: str) -> int:
        """The seq of the last message delivered to ``user`` (0 when none)."""
        log = self._logs.get(user)
        return log.last_seq if log else 0

    def unsubscribe(self, user: str, sub: Subscription) -> None:
        subs = self._subscribers.get(user)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[user]
