"""Per-user event streams: every message delivered to a user, kept in the store's
event log and fanned out to that user's subscribers (``/events/stream``, ``/ws``,
``Gateway.Subscribe``) on every replica.

``EventHub.publish`` appends to the log (which gives the seq) and hands the message
to the subscribers in this process at once. Appends made by other replicas arrive
as notices (``Store.watch_events``); a subscriber then reads what it lacks from the
log. A ``Subscription`` is a cursor over the log: it yields every event after its
starting point exactly once and in seq order, whatever the order in which
concurrent appends reach it, and a subscriber that falls behind reads from the log
instead of holding messages in memory. A resume from a point the log no longer
holds yields a ``reset`` message first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from dialog.v1 import message_pb2
from gateway import metrics
from gateway.backoff import backoff_delay_s
from gateway.config import RetryPolicy
from gateway.errors import StoreUnavailable
from gateway.store import Store
from gateway.translate import make_reset

log = logging.getLogger(__name__)

PAGE = 256
TRIM_EVERY = 64
WATCH_RETRY = RetryPolicy(max_attempts=0, initial_backoff_ms=200, max_backoff_ms=5000)


def _decode(body: bytes, seq: int) -> message_pb2.Message:
    msg = message_pb2.Message.FromString(body)
    msg.seq = seq
    return msg


class Subscription:
    """One subscriber's cursor over a user's event log."""

    def __init__(self, store: Store, user: str, buffer_max: int, owner: object | None = None):
        """``owner`` (a connection) does not get back the messages it published itself."""
        self._store = store
        self._user = user
        self._owner = owner
        self._skip: set[int] = set()
        self._buffer_max = max(buffer_max, 1)
        self._buffer: dict[int, message_pb2.Message] = {}
        self._next = 0  # the seq to yield next; 0 until ``start`` placed the cursor
        self._known = 0  # the highest seq known to exist
        self._reset: message_pb2.Message | None = None
        self._wake = asyncio.Event()

    async def start(self, after_seq: int) -> None:
        """Place the cursor after ``after_seq``, or at the end of the log for 0."""
        last = await self._store.last_event_seq(self._user)
        self._known = max(self._known, last)
        if after_seq == 0 or after_seq == last:
            self._next = last + 1
        else:
            page = await self._store.events_after(self._user, after_seq, 1)
            if page.reset:
                self._reset = make_reset(page.last_seq)
                self._next = page.last_seq + 1
            else:
                self._next = after_seq + 1
        for seq in [s for s in self._buffer if s < self._next]:
            del self._buffer[seq]

    def offer(self, msg: message_pb2.Message, origin: object | None = None) -> None:
        """A message this process appended (its seq is set), published by ``origin``."""
        if origin is not None and origin is self._owner:
            self._skip.add(msg.seq)
        self._known = max(self._known, msg.seq)
        if msg.seq >= self._next and len(self._buffer) < self._buffer_max:
            self._buffer[msg.seq] = msg
        self._wake.set()

    def notify(self, seq: int) -> None:
        """Another replica appended ``seq``."""
        if seq > self._known:
            self._known = seq
            self._wake.set()

    async def next(self, timeout_s: float | None = None) -> message_pb2.Message | None:
        """The next event in seq order (or a ``reset`` message once, first), or ``None``
        when none came within ``timeout_s``. Raises ``StoreUnavailable`` when the log
        cannot be read."""
        if self._reset is not None:
            reset, self._reset = self._reset, None
            return reset
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            msg = self._buffer.pop(self._next, None)
            if msg is not None:
                self._next += 1
                if msg.seq in self._skip:
                    self._skip.discard(msg.seq)
                    continue
                return msg
            if self._known >= self._next:
                await self._read_log()
                if self._reset is not None:
                    reset, self._reset = self._reset, None
                    return reset
                continue
            self._wake.clear()
            if deadline is None:
                await self._wake.wait()
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                return None

    async def _read_log(self) -> None:
        room = max(self._buffer_max - len(self._buffer), 1)
        page = await self._store.events_after(self._user, self._next - 1, min(PAGE, room))
        if page.reset:
            self._buffer.clear()
            self._skip.clear()
            self._reset = make_reset(page.last_seq)
            self._next = page.last_seq + 1
        for event in page.events:
            self._buffer.setdefault(event.seq, _decode(event.body, event.seq))
        if not page.events:
            self._known = page.last_seq  # nothing more was there: wait for news
        metrics.EVENT_LOG_READS.inc()

    async def __aiter__(self) -> AsyncIterator[message_pb2.Message]:
        while (msg := await self.next()) is not None:
            yield msg


class EventHub:
    """The event logs (in the store) and this process's subscribers, keyed by user."""

    def __init__(self, store: Store, *, buffer_max: int, log_max_len: int, log_max_age_s: float):
        self._store = store
        self._buffer_max = buffer_max
        self._log_max_len = log_max_len
        self._log_max_age_s = log_max_age_s
        self._subscribers: dict[str, set[Subscription]] = {}
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening for the other replicas' appends."""
        self._watcher = asyncio.create_task(self._watch(), name="event-notices")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def publish(
        self,
        user: str,
        msg: message_pb2.Message,
        origin: object | None = None,
        *,
        durable: bool = True,
    ) -> message_pb2.Message:
        """Append ``msg`` to the user's log (``msg.seq`` becomes its seq; ``durable``: see
        ``Store.append_event``) and hand it to this process's subscribers, except the
        one owned by ``origin`` (the connection that sent it). Raises
        ``StoreUnavailable`` when the log cannot be written: the message was then not
        delivered."""
        msg.seq = 0
        msg.seq = await self._store.append_event(user, msg.SerializeToString(), durable=durable)
        await self.appended(user, msg, origin)
        return msg

    async def appended(self, user: str, msg: message_pb2.Message, origin: object | None) -> None:
        """Hand ``msg``, which the store has just appended to ``user``'s log (``msg.seq``
        is its seq), to this process's subscribers, except ``origin``'s."""
        for sub in self._subscribers.get(user, ()):
            sub.offer(msg, origin)
        if msg.seq % TRIM_EVERY == 0:
            await self.trim(user)

    async def trim(self, user: str) -> None:
        await self._store.trim_events(user, self._log_max_len, self._log_max_age_s)

    async def subscribe(
        self, user: str, after_seq: int = 0, owner: object | None = None
    ) -> Subscription:
        """Open a subscription after ``after_seq`` (0: from now on). Its first message is
        a ``reset`` when that point is no longer in the log. What ``owner`` publishes
        does not come back to it."""
        sub = Subscription(self._store, user, self._buffer_max, owner)
        self._subscribers.setdefault(user, set()).add(sub)
        try:
            if after_seq:
                await self.trim(user)
            await sub.start(after_seq)
        except BaseException:
            self.unsubscribe(user, sub)
            raise
        return sub

    def unsubscribe(self, user: str, sub: Subscription) -> None:
        subs = self._subscribers.get(user)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[user]

    async def _watch(self) -> None:
        """Wake local subscribers on the other replicas' appends; after a broken watch,
        wake them all once more, since notices may have been missed meanwhile."""
        failures = 0
        while True:
            try:
                async for user, seq in self._store.watch_events():
                    failures = 0
                    for sub in self._subscribers.get(user, ()):
                        sub.notify(seq)
            except StoreUnavailable:
                failures += 1
                log.warning("event notices interrupted; catching up from the store")
            await asyncio.sleep(backoff_delay_s(WATCH_RETRY, max(failures, 1), 0.5))
            for user, subs in list(self._subscribers.items()):
                with contextlib.suppress(StoreUnavailable):
                    last = await self._store.last_event_seq(user)
                    for sub in subs:
                        sub.notify(last)
