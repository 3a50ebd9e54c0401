"""The shared store: everything in Redis (``REDIS_URL``), so every replica sees the same
dedup keys, entity seq, event logs, inbound queues, rate windows and connection counts.

Keys, under a configurable prefix (``dialog:``), one family per kind so that no
user, entity or back-end name can collide with another family:

- ``dedup:<key>`` hash {hash, expires_at, outcome}; ``entity:<entity>`` last applied seq;
- ``events:<user>`` stream with IDs ``<seq>-0``, ``evseq:<user>`` its INCR counter;
  ``notices`` the pub/sub channel that tells replicas about appends;
- ``queue:<backend>`` stream with consumer group ``gateway``, ``qattempts:<backend>``
  and ``qerrors:<backend>`` hashes by entry id, ``qholder:<backend>`` the replica
  delivering it; ``dead`` the dead-letter stream; ``inflight:<id>`` hash of a message
  being delivered directly, ``inflight`` their sorted set by lease end;
- ``rate:<key>`` sorted set of event times; ``conn:<user>`` hash {replica: count},
  ``replicas`` hash {replica: alive until};
- ``ticket:<ticket>`` "<expires_at> <identity>", set with NX and a TTL, taken with GETDEL.

Atomicity: every check-and-set is one Lua script (``redis_scripts``), or a MULTI;
``admit`` and ``complete`` are one script each (one round trip), which fills the seq the
log gives into the caller's templates (``WorkTemplate``, ``OutcomeTemplate``).
Durability: a write is acknowledged once Redis applied it; it survives a Redis crash
only with ``appendonly yes`` and ``appendfsync always`` (``everysec`` may lose the last
second), which is the operator's Redis configuration. The client never retries a
command on its own: a retried script could apply twice (two events, or a NEW seen as
a REPLAY); a failure reaches the caller as ``StoreUnavailable`` instead. Needs Redis >= 6.2
(XAUTOCLAIM, XTRIM MINID). Connection counts: ``gateway.store.redis_replicas``.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypedDict, TypeVar, Unpack

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from gateway.errors import StoreUnavailable
from gateway.store import redis_scripts as lua
from gateway.store import rules
from gateway.store.records import (
    Admitted,
    Completion,
    DeadLetter,
    DedupResult,
    DedupStatus,
    EntityDecision,
    EntityVerdict,
    Event,
    EventsPage,
    Intake,
    QueuedMessage,
)
from gateway.store.redis_replicas import ReplicaConnections

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_PREFIX = "dialog:"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_REPLICA_LEASE_S = 30.0
DEFAULT_TIMEOUT_S = 5.0
# Connections to Redis one process opens at most (its pool); more concurrent commands wait.
MAX_CONNECTIONS = 128
GROUP = "gateway"
NOTICE_POLL_S = 1.0


def _converted(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis errors enter here and leave as ``StoreUnavailable`` (STYLE 3)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if getattr(args[0], "closed", False):
            raise StoreUnavailable("the message store is closed")
        try:
            return await method(*args, **kwargs)
        except RedisError as exc:
            raise StoreUnavailable("the message store failed") from exc

    return wrapper


# Redis replies are bytes (the client does not decode), read in these two places.
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, bytes]:
    """A stream entry's fields by name (values stay bytes)."""
    return {_text(k): v for k, v in dict(raw).items()}


def _seq(entry_id: Any) -> int:
    """The seq of an event stream entry: its ID is ``<seq>-0``."""
    return int(_text(entry_id).split("-")[0])


class RedisOptions(TypedDict, total=False):
    """The keywords of ``RedisStore`` (and ``RedisStore.connect``)."""

    prefix: str
    clock: Callable[[], float]
    max_attempts: int
    replica_id: str
    replica_lease_s: float
    heartbeat_interval_s: float | None


def _dead_letter(entry_id: str, f: dict[str, bytes]) -> DeadLetter:
    return DeadLetter(
        entry_id,
        _text(f["message_id"]),
        _text(f["backend"]),
        f["body"],
        int(f["attempts"]),
        _text(f["error"]),
        float(f["dead_at"]),
    )


class RedisStore:
    """``gateway.store.Store`` in Redis. Open it with ``RedisStore.connect``."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        replica_id: str = "",
        replica_lease_s: float = DEFAULT_REPLICA_LEASE_S,
        heartbeat_interval_s: float | None = None,
    ) -> None:
        rules.require(max_attempts >= 1, "max_attempts must be at least 1")
        rules.require(replica_lease_s > 0, "replica_lease_s must be positive")
        self._redis = client
        self._prefix = prefix
        self._clock = clock
        self._max_attempts = max_attempts
        self.closed = False
        self._groups: set[str] = set()
        self._claim_cursor: dict[str, str] = {}
        self._scripts = {
            name: client.register_script(getattr(lua, name))
            for name in (
                "REMEMBER", "RECORD_OUTCOME", "ENTITY_SEQ", "RELEASE_ENTITY_SEQ", "APPEND_EVENT",
                "TRIM_EVENTS", "DELIVER", "FAIL", "REPLAY_DEAD_LETTER", "RATE_ACQUIRE",
                "HOLD_QUEUE", "TRACK_INFLIGHT", "SETTLE_INFLIGHT", "ADMIT", "COMPLETE",
            )
        }  # fmt: skip
        self.connections = ReplicaConnections(
            client,
            conn_key=lambda user: self._key("conn", user),
            replicas_key=self._key("replicas"),
            replica_id=replica_id or uuid.uuid4().hex,
            clock=clock,
            lease_s=replica_lease_s,
            heartbeat_s=heartbeat_interval_s or replica_lease_s / 3,
        )

    @classmethod
    async def connect(
        cls, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, **options: Unpack[RedisOptions]
    ) -> RedisStore:
        """Connect to ``url`` (``REDIS_URL``), check it answers, start the heartbeat.
        Every command has the deadline ``timeout_s``, the wait for a free connection
        included: at most ``MAX_CONNECTIONS`` are open, and a burst waits for one rather
        than failing."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
            # With maintenance notifications on (redis-py's default over RESP3), the pool
            # skips its check of an idle connection before handing it out: after a Redis
            # restart, every connection pooled before it would fail its next command.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        client = Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        store = cls(client, **options)
        try:
            await store.connections.start()
        except RedisError as exc:
            await client.aclose()
            raise StoreUnavailable("cannot reach the message store (REDIS_URL)") from exc
        return store

    def _key(self, family: str, name: str = "") -> str:
        return f"{self._prefix}{family}:{name}" if name else f"{self._prefix}{family}"

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=list(keys), args=list(args))

    # -- idempotency keys ------------------------------------------------------------
    @_converted
    async def remember(self, key: str, body_hash: str, ttl_s: float) -> DedupResult:
        rules.require(ttl_s > 0, "ttl_s must be positive")
        now_s = self._clock()
        args = (body_hash, lua.number(now_s), lua.number(now_s + ttl_s), rules.ttl_ms(ttl_s))
        status, outcome = await self._script("REMEMBER", [self._key("dedup", key)], args)
        return DedupResult(DedupStatus(_text(status)), outcome)

    @_converted
    async def record_outcome(self, key: str, outcome: bytes, ttl_s: float | None = None) -> None:
        expiry = (
            ("", "") if ttl_s is None else (lua.number(self._clock() + ttl_s), rules.ttl_ms(ttl_s))
        )
        await self._script("RECORD_OUTCOME", [self._key("dedup", key)], (outcome, *expiry))

    @_converted
    async def outcome(self, key: str) -> bytes | None:
        expires_at, outcome = await self._redis.hmget(
            self._key("dedup", key), ["expires_at", "outcome"]
        )
        if expires_at is None or self._clock() >= float(expires_at):
            return None
        return outcome if isinstance(outcome, bytes) else None

    @_converted
    async def forget(self, key: str) -> None:
        await self._redis.delete(self._key("dedup", key))

    # -- per-entity order ------------------------------------------------------------
    @_converted
    async def apply_entity_seq(self, entity: str, seq: int) -> EntityDecision:
        rules.require(seq >= 1, "seq must be at least 1")
        verdict, expected = await self._script("ENTITY_SEQ", [self._key("entity", entity)], [seq])
        return EntityDecision(EntityVerdict(_text(verdict)), int(expected))

    @_converted
    async def release_entity_seq(self, entity: str, seq: int) -> bool:
        rules.require(seq >= 1, "seq must be at least 1")
        keys = [self._key("entity", entity)]
        return bool(await self._script("RELEASE_ENTITY_SEQ", keys, [seq]))

    # -- a client message on its way in ----------------------------------------------
    @_converted
    async def admit(self, intake: Intake) -> Admitted:
        rules.require(intake.lease_s > 0, "lease_s must be positive")
        rules.require(not intake.key or intake.hold_s > 0, "hold_s must be positive")
        rules.require(not intake.entity or intake.entity_seq >= 1, "seq must be at least 1")
        now_s = self._clock()
        inflight_id = uuid.uuid4().hex
        keys = [
            self._key("dedup", intake.key or "-"),  # "-" for none: not touched
            self._key("entity", intake.entity or "-"),
            *self._event_keys(intake.user),
            self._key("inflight", inflight_id),
            self._key("inflight"),
        ]
        hold = (
            (lua.number(now_s + intake.hold_s), rules.ttl_ms(intake.hold_s))
            if intake.key
            else ("", "")
        )
        args = [
            "1" if intake.key else "0", intake.body_hash, lua.number(now_s), *hold,
            intake.entity_seq if intake.entity else 0,
            intake.event, self.connections.replica_id, intake.user,
            inflight_id, intake.message_id, intake.backend, intake.work.before, intake.work.after,
            lua.number(now_s + intake.lease_s),
        ]  # fmt: skip
        status, outcome, verdict, expected, seq = await self._script("ADMIT", keys, args)
        dedup = None if status is None else DedupResult(DedupStatus(_text(status)), outcome)
        decision = (
            None
            if verdict is None
            else EntityDecision(EntityVerdict(_text(verdict)), int(expected))
        )
        if not seq:
            return Admitted(dedup, decision)
        return Admitted(dedup, decision, int(seq), inflight_id)

    @_converted
    async def complete(self, completion: Completion) -> int:
        rules.require(not completion.key or completion.ttl_s > 0, "ttl_s must be positive")
        now_s = self._clock()
        template = completion.outcome if completion.key else None
        keys = [
            *self._event_keys(completion.user),
            self._key("dedup", completion.key or "-"),  # "-": not touched
            self._key("inflight", completion.inflight or "-"),
            self._key("inflight"),
        ]
        record: tuple[str | bytes, ...] = ("0", "", "", "", "")
        if template is not None:
            expires_at = lua.number(now_s + completion.ttl_s)
            ttl_ms = str(rules.ttl_ms(completion.ttl_s))
            record = ("1", template.prefix, template.final, expires_at, ttl_ms)
        args = [completion.event, lua.number(now_s), self.connections.replica_id]
        args += [completion.user, *record, completion.inflight]
        return int(await self._script("COMPLETE", keys, args))

    # -- per-user event log ----------------------------------------------------------
    def _event_keys(self, user: str) -> list[str]:
        """The keys of ``APPEND_EVENT``: the user's stream, its seq counter, the notices."""
        return [self._key("events", user), self._key("evseq", user), self._key("notices")]

    @_converted
    async def append_event(self, user: str, message: bytes, *, durable: bool = True) -> int:
        # Every write is as durable as Redis's own persistence makes it (``durable`` too).
        args = [message, lua.number(self._clock()), self.connections.replica_id, user]
        return int(await self._script("APPEND_EVENT", self._event_keys(user), args))

    @_converted
    async def events_after(self, user: str, after_seq: int, limit: int) -> EventsPage:
        rules.require(after_seq >= 0 and limit >= 1, "after_seq >= 0 and limit >= 1")
        stream = self._key("events", user)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._key("evseq", user))
            pipe.xrange(stream, "-", "+", count=1)
            pipe.xrange(stream, f"{after_seq + 1}-0", "+", count=limit)
            last_raw, head, page = await pipe.execute()
        last = int(last_raw or 0)
        first = rules.first_seq(_seq(head[0][0]) if head else None, last)
        if rules.is_reset(after_seq, first, last):
            return EventsPage((), True, first, last)
        events = []
        for entry_id, raw in page:
            fields = _fields(raw)
            events.append(Event(_seq(entry_id), fields["body"], float(fields["at"])))
        return EventsPage(tuple(events), False, first, last)

    @_converted
    async def trim_events(self, user: str, max_len: int, max_age_s: float) -> int:
        rules.require(max_len >= 0 and max_age_s >= 0, "max_len and max_age_s must be >= 0")
        cutoff_s = rules.age_cutoff_s(self._clock(), max_age_s)
        keys = [self._key("events", user)]
        return int(await self._script("TRIM_EVENTS", keys, [max_len, lua.number(cutoff_s)]))

    @_converted
    async def last_event_seq(self, user: str) -> int:
        return int(await self._redis.get(self._key("evseq", user)) or 0)

    async def watch_events(self) -> AsyncIterator[tuple[str, int]]:
        if self.closed:
            raise StoreUnavailable("the message store is closed")
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._key("notices"))
            while True:
                # A bounded wait: the client's socket timeout must not fire on a quiet line.
                notice = await pubsub.get_message(timeout=NOTICE_POLL_S)
                if notice is None or notice.get("type") != "message":
                    continue
                replica, seq, user = _text(notice["data"]).split(" ", 2)
                if replica != self.connections.replica_id:
                    yield user, int(seq)
        except RedisError as exc:
            raise StoreUnavailable("lost the message store's event notices") from exc
        finally:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- durable inbound queue -------------------------------------------------------
    async def _ensure_group(self, backend: str) -> str:
        """The back-end's stream, with its consumer group (created from ID 0, so
        entries added before the group existed are delivered too)."""
        stream = self._key("queue", backend)
        if backend not in self._groups:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(backend)
        return stream

    def _queue_keys(self, backend: str) -> list[str]:
        return [
            self._key("queue", backend),
            self._key("qattempts", backend),
            self._key("qerrors", backend),
            self._key("dead"),
        ]

    @_converted
    async def enqueue(self, message_id: str, backend: str, body: bytes) -> str:
        stream = await self._ensure_group(backend)
        fields: dict[str | bytes, str | bytes] = {
            "message_id": message_id,
            "body": body,
            "enqueued_at": lua.number(self._clock()),
        }
        return _text(await self._redis.xadd(stream, fields))  # type: ignore[arg-type]

    @_converted
    async def track_inflight(
        self, message_id: str, backend: str, body: bytes, lease_s: float
    ) -> str:
        rules.require(lease_s > 0, "lease_s must be positive")
        inflight_id = uuid.uuid4().hex
        keys = [self._key("inflight", inflight_id), self._key("inflight")]
        until_s = lua.number(self._clock() + lease_s)
        await self._script(
            "TRACK_INFLIGHT", keys, [inflight_id, message_id, backend, body, until_s]
        )
        return inflight_id

    @_converted
    async def settle_inflight(self, inflight_id: str, *, requeue: bool = False) -> str:
        backend = ""
        if requeue:
            backend = _text(
                await self._redis.hget(self._key("inflight", inflight_id), "backend") or b""
            )
            if backend:
                await self._ensure_group(backend)
        keys = [
            self._key("inflight", inflight_id),
            self._key("inflight"),
            self._key("queue", backend or "-"),
        ]
        args = [inflight_id, "1" if requeue and backend else "0", lua.number(self._clock())]
        return _text(await self._script("SETTLE_INFLIGHT", keys, args) or b"")

    @_converted
    async def requeue_stale_inflight(self, limit: int) -> int:
        rules.require(limit >= 1, "limit must be at least 1")
        stale = await self._redis.zrangebyscore(
            self._key("inflight"), "-inf", lua.number(self._clock()), start=0, num=limit
        )
        moved = 0
        for inflight_id in stale:
            moved += bool(await self.settle_inflight(_text(inflight_id), requeue=True))
        return moved

    @_converted
    async def claim(
        self, backend: str, consumer: str, count: int, min_idle_s: float
    ) -> list[QueuedMessage]:
        rules.require(count >= 1 and min_idle_s >= 0, "count >= 1 and min_idle_s >= 0")
        stream = await self._ensure_group(backend)
        try:
            entries = await self._take(stream, backend, consumer, count, min_idle_s)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):  # the stream was removed under us: recreate
                raise
            self._groups.discard(backend)
            stream = await self._ensure_group(backend)
            entries = await self._take(stream, backend, consumer, count, min_idle_s)
        if not entries:
            return []
        args = [GROUP, self._max_attempts, lua.number(self._clock()), backend, *entries]
        out = await self._script("DELIVER", self._queue_keys(backend), args)
        handed = {_text(out[i]): int(out[i + 1]) for i in range(0, len(out), 2)}
        return [
            QueuedMessage(entry_id, _text(fields["message_id"]), backend, fields["body"], n)
            for entry_id, fields in entries.items()
            if (n := handed.get(entry_id)) is not None
        ]

    async def _take(
        self, stream: str, backend: str, consumer: str, count: int, min_idle_s: float
    ) -> dict[str, dict[str, bytes]]:
        """XAUTOCLAIM what lay idle long enough (resuming the scan where the last one
        stopped), then XREADGROUP new entries, up to ``count`` in all."""
        cursor = self._claim_cursor.get(backend, "0-0")
        reply: Any = await self._redis.xautoclaim(
            stream, GROUP, consumer, int(min_idle_s * 1000), cursor, count=count
        )
        self._claim_cursor[backend] = _text(reply[0])
        entries = {_text(eid): _fields(raw) for eid, raw in reply[1] if raw}
        if len(entries) < count:
            fresh: Any = await self._redis.xreadgroup(
                GROUP, consumer, {stream: ">"}, count=count - len(entries)
            )
            # RESP2 answers [[stream, entries]], RESP3 {stream: entries}.
            for _, batch in fresh.items() if isinstance(fresh, dict) else fresh or ():
                entries.update((_text(eid), _fields(raw)) for eid, raw in batch)
        return entries

    @_converted
    async def retry(self, backend: str, entry_id: str, consumer: str) -> QueuedMessage | None:
        stream = await self._ensure_group(backend)
        # XCLAIM with no minimum idle time: restarts the idle clock of a pending entry
        # (and answers nothing for one that is not pending).
        claimed: Any = await self._redis.xclaim(stream, GROUP, consumer, 0, [entry_id])
        entries = {_text(eid): _fields(raw) for eid, raw in claimed or () if raw}
        if entry_id not in entries:
            return None
        args = [GROUP, self._max_attempts, lua.number(self._clock()), backend, entry_id]
        out = await self._script("DELIVER", self._queue_keys(backend), args)
        if not out:
            return None
        fields = entries[entry_id]
        message_id = _text(fields["message_id"])
        return QueuedMessage(entry_id, message_id, backend, fields["body"], int(out[1]))

    @_converted
    async def ack(self, backend: str, entry_id: str) -> None:
        keys = self._queue_keys(backend)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys[0], GROUP, entry_id)
            pipe.xdel(keys[0], entry_id)
            pipe.hdel(keys[1], entry_id)
            pipe.hdel(keys[2], entry_id)
            await pipe.execute()

    @_converted
    async def fail(self, backend: str, entry_id: str, error: str) -> int:
        args = [GROUP, self._max_attempts, lua.number(self._clock()), backend, entry_id, error]
        return int(await self._script("FAIL", self._queue_keys(backend), args))

    @_converted
    async def queue_depth(self, backend: str) -> int:
        # Acknowledged entries are deleted (XDEL), so the stream holds only the rest.
        return int(await self._redis.xlen(self._key("queue", backend)))

    @_converted
    async def hold_queue(self, backend: str, holder: str, lease_s: float) -> bool:
        rules.require(lease_s > 0, "lease_s must be positive")
        keys = [self._key("qholder", backend)]
        return bool(await self._script("HOLD_QUEUE", keys, [holder, rules.ttl_ms(lease_s)]))

    @_converted
    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        rules.require(limit >= 1, "limit must be at least 1")
        found: Any = await self._redis.xrange(self._key("dead"), count=limit)
        return [_dead_letter(_text(entry_id), _fields(raw)) for entry_id, raw in found]

    @_converted
    async def replay_dead_letter(self, entry_id: str) -> bool:
        dead = self._key("dead")
        found: Any = await self._redis.xrange(dead, entry_id, entry_id)
        if not found:
            return False
        backend = _text(_fields(found[0][1])["backend"])
        stream = await self._ensure_group(backend)
        args = [entry_id, lua.number(self._clock()), backend]
        return await self._script("REPLAY_DEAD_LETTER", [dead, stream], args) is not None

    # -- limits ----------------------------------------------------------------------
    @_converted
    async def rate_acquire(
        self, key: str, limit: int, window_s: float, now_s: float
    ) -> float | None:
        rules.require(limit >= 1 and window_s > 0, "limit >= 1 and window_s > 0")
        args = [lua.number(now_s - window_s), limit, lua.number(now_s), uuid.uuid4().hex]
        oldest = await self._script(
            "RATE_ACQUIRE", [self._key("rate", key)], [*args, rules.ttl_ms(window_s)]
        )
        return None if oldest is None else rules.retry_after_s(float(oldest), window_s, now_s)

    @_converted
    async def conn_open(self, user: str, limit: int) -> bool:
        return await self.connections.open(user, limit)

    @_converted
    async def conn_close(self, user: str) -> None:
        await self.connections.close(user)

    @_converted
    async def conn_count(self, user: str) -> int:
        return await self.connections.count(user)

    # -- single-use tickets ----------------------------------------------------------
    @_converted
    async def ticket_put(self, ticket: str, identity: bytes, ttl_s: float) -> bool:
        rules.require(ttl_s > 0, "ttl_s must be positive")
        # The expiry inside the value follows the store's clock; the key's own TTL
        # (a little longer) only makes Redis forget it.
        value = lua.number(self._clock() + ttl_s).encode() + b" " + identity
        stored = await self._redis.set(
            self._key("ticket", ticket), value, nx=True, px=rules.ttl_ms(ttl_s) + 1000
        )
        return bool(stored)

    @_converted
    async def ticket_take(self, ticket: str) -> bytes | None:
        value = await self._redis.getdel(self._key("ticket", ticket))
        if value is None:
            return None
        raw = value if isinstance(value, bytes) else str(value).encode()
        expires_at, _, identity = raw.partition(b" ")
        return identity if float(expires_at) > self._clock() else None

    # -- lifecycle -------------------------------------------------------------------

    async def ping(self) -> bool:
        if self.closed:
            return False
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        """Stop the heartbeat and leave ``replicas``: this replica's counts stop
        counting at once (its connections end with it)."""
        if self.closed:
            return
        self.closed = True
        await self.connections.stop()
        with contextlib.suppress(RedisError):
            await self._redis.aclose()
