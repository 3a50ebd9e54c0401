"""Single-use, short-lived tickets for browsers, which cannot set headers on
``WebSocket`` or ``EventSource`` (pure: the clock and the random value are arguments).

A ticket stands for the identity of the token that asked for it, including that
token's expiry, so a stream opened with a ticket still ends when the token does.
The tickets themselves live in the message store (``Store.ticket_put`` and
``Store.ticket_take``), so that a ticket issued by one worker or replica is redeemed
on any other; ``TicketBook`` is the bounded, in-memory book of the SQLite store.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.auth import Identity

MAX_TICKETS = 10000
# ``secrets.token_urlsafe(32)`` gives 43 characters; anything else is refused before
# the store is asked.
TICKET_BYTES = 32
_WELL_FORMED = re.compile(r"[A-Za-z0-9_-]{43}")


def well_formed(ticket: str) -> bool:
    """Whether ``ticket`` has the shape of an issued ticket (43 URL-safe characters)."""
    return _WELL_FORMED.fullmatch(ticket) is not None


def ticket_lifetime_s(identity: Identity, ttl_s: float, now_s: float) -> float:
    """A new ticket's lifetime: ``ttl_s``, or less when the token expires sooner
    (0 or less: the token has expired, and no ticket may stand for it)."""
    return min(ttl_s, identity.expires_at - now_s)


@dataclass
class TicketBook:
    """Outstanding tickets and the value each stands for, in issue order, each taken
    once before it expires; at most ``max_tickets`` at a time."""

    max_tickets: int = MAX_TICKETS
    _tickets: OrderedDict[str, tuple[bytes, float]] = field(default_factory=OrderedDict)

    def put(self, ticket: str, value: bytes, expires_at: float, now_s: float) -> bool:
        """Keep ``value`` under ``ticket`` until ``expires_at``; False (nothing kept)
        when ``ticket`` is outstanding or the book is full."""
        self._expire(now_s)
        if ticket in self._tickets or len(self._tickets) >= self.max_tickets:
            return False
        self._tickets[ticket] = (value, expires_at)
        return True

    def take(self, ticket: str, now_s: float) -> bytes | None:
        """The value behind ``ticket``, once; ``None`` for an unknown, taken or expired one."""
        self._expire(now_s)
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[1] <= now_s:
            return None
        return entry[0]

    def __len__(self) -> int:
        return len(self._tickets)

    def _expire(self, now_s: float) -> None:
        # Issue order is nearly expiry order (lifetimes differ only for tokens that
        # expire sooner); ``take`` checks the expiry of the one it finds anyway.
        while self._tickets:
            ticket, (_value, expires_at) = next(iter(self._tickets.items()))
            if expires_at > now_s:
                break
            del self._tickets[ticket]
