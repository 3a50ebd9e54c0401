"""The decisions every store makes, as pure functions (no I/O; times are arguments).

The SQLite store calls these inside one transaction. The Redis store cannot run
Python inside Redis, so its Lua scripts (``gateway/store/redis_scripts.py``)
restate the same rules; the shared contract suite
(``tests/component/test_store_contract.py``) holds both stores to them.
"""

from __future__ import annotations

import math

from gateway.store.records import DedupStatus, EntityDecision, EntityVerdict

MIN_RETRY_AFTER_S = 0.001
NOT_ACKNOWLEDGED = "delivery not acknowledged"


def dedup_status(
    stored_hash: str | None, expires_at_s: float | None, body_hash: str, now_s: float
) -> DedupStatus:
    """NEW when nothing live is stored for the key, else REPLAY or CONFLICT by body hash.

    An entry is live while ``now_s < expires_at_s``; an expired one counts as absent.
    """
    if stored_hash is None or expires_at_s is None or now_s >= expires_at_s:
        return DedupStatus.NEW
    return DedupStatus.REPLAY if stored_hash == body_hash else DedupStatus.CONFLICT


def entity_decision(last_seq: int, seq: int) -> EntityDecision:
    """Apply ``seq`` only when it is exactly the next one (an entity's first seq is 1)."""
    if seq == last_seq + 1:
        return EntityDecision(EntityVerdict.APPLY, seq + 1)
    if seq <= last_seq:
        return EntityDecision(EntityVerdict.DUPLICATE, last_seq + 1)
    return EntityDecision(EntityVerdict.GAP, last_seq + 1)


def first_seq(oldest_kept: int | None, last_seq: int) -> int:
    """The oldest seq still in a log: its first entry, or ``last_seq + 1`` when empty."""
    return last_seq + 1 if oldest_kept is None else oldest_kept


def is_reset(after_seq: int, first: int, last_seq: int) -> bool:
    """A resume after ``after_seq`` cannot be served in full: something between was
    trimmed, or the client claims a seq this log never gave (the log was lost)."""
    return after_seq > last_seq or after_seq + 1 < first


def size_trim_point(last_seq: int, max_len: int) -> int:
    """The first seq kept when a log keeps at most ``max_len`` entries."""
    return max(last_seq - max_len + 1, 1)


def age_cutoff_s(now_s: float, max_age_s: float) -> float:
    """Entries with ``at_s`` below this are too old. Age trimming removes the oldest
    entries up to the first one that is not too old, so it never leaves a hole."""
    return now_s - max_age_s


def retry_after_s(oldest_s: float, window_s: float, now_s: float) -> float:
    """Seconds until the oldest event of a full sliding window leaves it (as
    ``gateway.ratelimit.SlidingWindow.acquire`` answers)."""
    return max(oldest_s + window_s - now_s, MIN_RETRY_AFTER_S)


def goes_dead(attempts: int, max_attempts: int) -> bool:
    """A message delivered ``attempts`` times without success moves to the dead letters."""
    return attempts >= max_attempts


def lost_delivery_error(last_error: str | None) -> str:
    """The error kept for a message whose last delivery was never acknowledged."""
    return f"{NOT_ACKNOWLEDGED} (last error: {last_error})" if last_error else NOT_ACKNOWLEDGED


def ttl_ms(ttl_s: float) -> int:
    """A Redis expiry in whole milliseconds, at least 1, never shorter than ``ttl_s``."""
    return max(math.ceil(ttl_s * 1000), 1)


def require(ok: bool, what: str) -> None:
    """Refuse a caller's programming error (a bad argument) with ``ValueError``."""
    if not ok:
        raise ValueError(what)
