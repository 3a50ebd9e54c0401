"""Which request ids an adapter has already applied, per user (pure, no I/O).

Delivery from the gateway is at least once: after a reconnect it may send a
message again. ``RecentRequests`` remembers, for each ``(user, id)``, whether
the request is being applied or which final reply it got, so a repeated id is
never applied twice; the shell resends the remembered final reply instead.

Memory is bounded three ways: ids per user, entries in all, and the summed size
of the remembered replies. The least recently used entries go first. Keys
include the user, so one user can never see another user's reply.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_IDS_PER_USER = 10_000
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class Seen(enum.Enum):
    """What an adapter knows about a request id."""

    NEW = "new"
    IN_PROGRESS = "in_progress"
    DONE = "done"


@dataclass(frozen=True)
class Decision(Generic[T]):
    """The answer to ``begin``/``peek``: ``final`` is set when ``seen`` is DONE."""

    seen: Seen
    final: T | None = None


@dataclass
class _Entry(Generic[T]):
    final: T | None
    size: int


class RecentRequests(Generic[T]):
    """A bounded LRU memory of request ids and their final replies."""

    def __init__(
        self,
        size_of: Callable[[T], int],
        *,
        ids_per_user: int = DEFAULT_IDS_PER_USER,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if min(ids_per_user, max_entries, max_bytes) <= 0:
            raise ValueError("RecentRequests bounds must be positive")
        self._size_of = size_of
        self._ids_per_user = ids_per_user
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], _Entry[T]] = OrderedDict()
        self._by_user: dict[str, OrderedDict[str, None]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        """The summed size of the remembered final replies."""
        return self._bytes

    def peek(self, user: str, request_id: str) -> Decision[T]:
        """What is known about the id, without changing anything."""
        entry = self._entries.get((user, request_id))
        if entry is None:
            return Decision(Seen.NEW)
        if entry.final is None:
            return Decision(Seen.IN_PROGRESS)
        return Decision(Seen.DONE, entry.final)

    def begin(self, user: str, request_id: str) -> Decision[T]:
        """Decide about a delivery. A NEW id is marked in progress before returning."""
        decision = self.peek(user, request_id)
        if decision.seen is Seen.NEW:
            self._put(user, request_id, _Entry(None, 0))
        else:
            self._touch(user, request_id)
        return decision

    def finish(self, user: str, request_id: str, final: T) -> None:
        """Remember the final reply of an applied request.

        A reply larger than the whole byte budget is not kept: the id is forgotten.
        """
        size = self._size_of(final)
        self._discard(user, request_id)
        if size <= self._max_bytes:
            self._put(user, request_id, _Entry(final, size))

    def abandon(self, user: str, request_id: str) -> None:
        """Forget an id whose processing stopped before a final reply was sent."""
        entry = self._entries.get((user, request_id))
        if entry is not None and entry.final is None:
            self._discard(user, request_id)

    def _put(self, user: str, request_id: str, entry: _Entry[T]) -> None:
        self._entries[(user, request_id)] = entry
        self._by_user.setdefault(user, OrderedDict())[request_id] = None
        self._bytes += entry.size
        self._evict(user)

    def _touch(self, user: str, request_id: str) -> None:
        self._entries.move_to_end((user, request_id))
        self._by_user[user].move_to_end(request_id)

    def _discard(self, user: str, request_id: str) -> None:
        entry = self._entries.pop((user, request_id), None)
        if entry is None:
            return
        self._bytes -= entry.size
        ids = self._by_user[user]
        del ids[request_id]
        if not ids:
            del self._by_user[user]

    def _evict(self, user: str) -> None:
        ids = self._by_user.get(user)
        while ids is not None and len(ids) > self._ids_per_user:
            self._discard(user, next(iter(ids)))
            ids = self._by_user.get(user)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest_user, oldest_id = next(iter(self._entries))
            self._discard(oldest_user, oldest_id)
