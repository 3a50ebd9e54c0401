"""Single-use, short-lived tickets for browsers, which cannot set headers on
``WebSocket`` or ``EventSource`` (pure: the clock and the random value are arguments).

A ticket stands for the identity of the token that asked for it, including that
token's expiry, so a stream opened with a ticket still ends when the token does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.auth import Identity
from gateway.errors import RateLimited

MAX_TICKETS = 10000


@dataclass
class TicketBook:
    """Outstanding tickets, oldest first, each redeemable once before it expires."""

    ttl_s: float
    max_tickets: int = MAX_TICKETS
    _tickets: OrderedDict[str, tuple[Identity, float]] = field(default_factory=OrderedDict)

    def issue(self, identity: Identity, ticket: str, now_s: float) -> float:
        """Record ``ticket`` for ``identity``; returns its lifetime in seconds."""
        self._expire(now_s)
        if len(self._tickets) >= self.max_tickets:
            raise RateLimited("too many outstanding tickets; try again shortly", retry_after_s=1)
        expires_at = min(now_s + self.ttl_s, identity.expires_at)
        self._tickets[ticket] = (identity, expires_at)
        return expires_at - now_s

    def redeem(self, ticket: str, now_s: float) -> Identity | None:
        """The identity behind ``ticket``, once; ``None`` for an unknown, used or expired one."""
        self._expire(now_s)
        entry = self._tickets.pop(ticket, None)
        return entry[0] if entry is not None else None

    def _expire(self, now_s: float) -> None:
        while self._tickets:
            ticket, (_identity, expires_at) = next(iter(self._tickets.items()))
            if expires_at > now_s:
                break
            del self._tickets[ticket]
