"""Pick the store from the configuration: Redis when ``REDIS_URL`` is set, else
SQLite in ``DATA_DIR``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gateway.store import Store
from gateway.store.redis import DEFAULT_PREFIX, RedisStore
from gateway.store.sqlite import DB_NAME, DEFAULT_MAX_ATTEMPTS, SQLiteStore


async def connect_store(
    *,
    data_dir: Path,
    redis_url: str = "",
    key_prefix: str = DEFAULT_PREFIX,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    clock: Callable[[], float] = time.time,
    sync: str = "full",
) -> Store:
    """The shared Redis store for ``redis_url``, or the embedded one at
    ``data_dir / gateway.db`` (``sync``: see ``gateway.store.sqlite_db``; Redis's own
    durability is its ``appendfsync``). Raises ``StoreUnavailable`` when it cannot be
    opened."""
    if redis_url:
        return await RedisStore.connect(
            redis_url, prefix=key_prefix, max_attempts=max_attempts, clock=clock
        )
    return await SQLiteStore.open(
        data_dir / DB_NAME, max_attempts=max_attempts, clock=clock, sync=sync
    )
