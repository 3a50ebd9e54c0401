"""A back-end's response metadata → HTTP response headers of a transcoded call (pure).

As grpc-gateway does, the back-end's response headers become ``Grpc-Metadata-<key>`` headers
and its trailers ``Grpc-Trailer-<key>`` headers (a trailer is known before the HTTP headers
are sent only for an answer that is not a stream). Unlike grpc-gateway, only the names of the
back-end's metadata allowlist pass (``gateway.grpc.proxy.allowed_metadata``: ``x-request-id``
and its ``forward_metadata``, the names its calls may carry both ways), and never:

- gRPC's own entries (``grpc-*``: status, message, details, encodings, timeouts) or HTTP/2
  pseudo-headers;
- the entity and connection headers of HTTP (``content-type``, ``content-length``, the
  hop-by-hop headers of RFC 9110 section 7.6.1, ``te``, ``trailer``...);
- credentials and the identity the gateway asserts (``UNFORWARDABLE_METADATA``).

A ``-bin`` value is sent in base64 (standard alphabet, padded: the form gRPC's wire allows and
the gateway accepts for ``-bin`` request headers); any other value must be printable ASCII
(RFC 9110 section 5.5), or it is dropped. At most ``MAX_ENTRIES`` entries of at most
``MAX_VALUE_BYTES`` each and ``MAX_TOTAL_BYTES`` together pass, in the back-end's order,
headers before trailers; the others are dropped.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import UNFORWARDABLE_METADATA

HEADER_PREFIX = "grpc-metadata-"
TRAILER_PREFIX = "grpc-trailer-"
MAX_ENTRIES = 32
MAX_VALUE_BYTES = 4096
MAX_TOTAL_BYTES = 8192  # names (with their prefix) and values of every entry sent
# Never passed, whatever the allowlist says: the headers of HTTP itself (RFC 9110 sections
# 6.4, 7.6.1 and 8; RFC 9112 section 6) and of the gateway's own answer.
HTTP_OWN = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "host",
        "content-type",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "proxy-authenticate",
        "www-authenticate",
    }
)

Metadata = Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True)
class ResponseMetadata:
    """The headers to add to the HTTP answer, and how many entries were left out (a
    name outside the allowlist is not counted: it is simply not the client's)."""

    headers: tuple[tuple[str, str], ...] = ()
    dropped: int = 0


def passes(name: str, allowed: frozenset[str]) -> bool:
    """Whether the metadata ``name`` may reach an HTTP client."""
    return (
        name in allowed
        and not name.startswith(("grpc-", ":"))
        and name not in HTTP_OWN
        and name not in UNFORWARDABLE_METADATA
    )


def header_value(name: str, value: str | bytes) -> str | None:
    """The HTTP form of one value (base64 for ``-bin``), or None when it cannot be one."""
    if name.endswith("-bin"):
        raw = value if isinstance(value, bytes) else value.encode()
        return base64.b64encode(raw).decode("ascii")
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not all(" " <= c <= "~" for c in text):
        return None
    return text.strip(" ")


def response_metadata(
    headers: Metadata, trailers: Metadata, allowed: frozenset[str]
) -> ResponseMetadata:
    """``Grpc-Metadata-*`` for ``headers``, then ``Grpc-Trailer-*`` for ``trailers``, both
    filtered by ``allowed`` and bounded (see the module docstring)."""
    kept: list[tuple[str, str]] = []
    dropped, total = 0, 0
    tagged = [(HEADER_PREFIX, e) for e in headers] + [(TRAILER_PREFIX, e) for e in trailers]
    for prefix, (key, value) in tagged:
        name = key.lower()
        if not passes(name, allowed):
            continue
        text = header_value(name, value)
        size = len(prefix) + len(name) + len(text or "")
        if (
            text is None
            or len(text) > MAX_VALUE_BYTES
            or len(kept) == MAX_ENTRIES
            or total + size > MAX_TOTAL_BYTES
        ):
            dropped += 1
            continue
        kept.append((prefix + name, text))
        total += size
    return ResponseMetadata(tuple(kept), dropped)
