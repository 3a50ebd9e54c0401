"""The browser Origin allowlist (pure). See RFC 6454 for the serialization of an origin.

Browsers always send ``Origin`` on a WebSocket handshake and on cross-origin
requests; a request with an ``Origin`` not on the list is refused. Clients that
are not browsers (the CLI, native programs) send no ``Origin``: they are let
through to authentication, which they must pass like everyone else.
"""

from __future__ import annotations


def parse_allowed_origins(text: str) -> frozenset[str]:
    """``ALLOWED_ORIGINS``: comma-separated origins such as ``https://app.example``."""
    return frozenset(o.strip().lower().rstrip("/") for o in text.split(",") if o.strip())


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """True when the request has no ``Origin`` or its origin is on the list.

    The opaque origin ``null`` (sandboxed frames, ``file:`` pages) is never allowed.
    """
    if origin is None:
        return True
    return origin.strip().lower().rstrip("/") in allowed
