"""Per-user connection counts shared by every replica (Redis), safe against a replica
that dies without closing its connections.

A single shared counter would leak: a crashed replica never decrements it. Instead
each replica counts its own connections in its field of the user's hash
(``conn:<user>`` {replica id: count}) and keeps itself alive in ``replicas``
{replica id: alive until}, on every call and from a heartbeat task every
``lease_s / 3``. Fields of a replica whose lease lapsed stop counting, and the next
open drops them, so a crashed replica's connections free up within ``lease_s``;
a long-lived connection of a live replica never expires on its own (as it would
under a TTL on a shared counter). A clean stop leaves ``replicas`` at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.store import redis_scripts as lua

log = logging.getLogger(__name__)


class ReplicaConnections:
    """This replica's side of the shared connection counts."""

    def __init__(
        self,
        client: Redis,
        *,
        conn_key: Callable[[str], str],
        replicas_key: str,
        replica_id: str,
        clock: Callable[[], float],
        lease_s: float,
        heartbeat_s: float,
    ) -> None:
        self._conn_key = conn_key
        self._replicas_key = replicas_key
        self.replica_id = replica_id
        self._clock = clock
        self._lease_s = lease_s
        self._heartbeat_s = heartbeat_s
        self._redis = client
        self._open = client.register_script(lua.CONN_OPEN)
        self._close = client.register_script(lua.CONN_CLOSE)
        self._count = client.register_script(lua.CONN_COUNT)
        self._heartbeat = client.register_script(lua.HEARTBEAT)
        self._task: asyncio.Task[None] | None = None

    def _alive_args(self) -> list[str]:
        now_s = self._clock()
        return [self.replica_id, lua.number(now_s), lua.number(now_s + self._lease_s)]

    async def open(self, user: str, limit: int) -> bool:
        keys = [self._conn_key(user), self._replicas_key]
        return bool(await self._open(keys=keys, args=[*self._alive_args(), limit]))

    async def close(self, user: str) -> None:
        await self._close(keys=[self._conn_key(user), self._replicas_key], args=self._alive_args())

    async def count(self, user: str) -> int:
        keys = [self._conn_key(user), self._replicas_key]
        return int(await self._count(keys=keys, args=self._alive_args()))

    async def beat(self) -> None:
        """Mark this replica alive for ``lease_s``; forget replicas that are not."""
        await self._heartbeat(keys=[self._replicas_key], args=self._alive_args())

    async def start(self) -> None:
        """Beat once (so an unreachable Redis fails the start), then keep beating."""
        await self.beat()
        self._task = asyncio.create_task(
            self._beat_forever(), name=f"redis-store-heartbeat-{self.replica_id}"
        )

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self.beat()
            except RedisError as exc:  # the next beat (or call) retries; the lease absorbs it
                log.warning("store heartbeat failed: %s", type(exc).__name__)

    async def stop(self) -> None:
        """Stop beating and leave ``replicas``: this replica's counts stop counting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike ``await task``, keeps our own cancellation
        try:
            await self._redis.hdel(self._replicas_key, self.replica_id)
        except RedisError:  # the lease expires anyway
            log.warning("could not leave the replica set; its lease will lapse")
