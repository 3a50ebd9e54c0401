"""The CORS answers of the HTTPS port (pure): the gateway's own routes and the transcoded
ones, for the origins of ``ALLOWED_ORIGINS`` (Fetch standard, section 3.2 "CORS protocol").

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered
by the gateway itself, from what the path really has: ``Access-Control-Allow-Methods`` lists
the methods of its routes (a transcoded path's ``google.api.http`` methods; ``POST`` for a
path of the RPC shape), ``Access-Control-Allow-Headers`` what a page may send
(``REQUEST_HEADERS`` and the back-ends' ``forward_metadata``). It is 200 when the origin, the
method and the headers are all allowed, else 400 ``Disallowed CORS <what>``; an origin not on
the list gets no CORS header at all. Other requests from an allowed origin get
``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers`` (``Retry-After`` and the
back-end's ``Grpc-Metadata-*``/``Grpc-Trailer-*`` headers that the answer has). Every answer
to a request with ``Origin`` says ``Vary: Origin``. No credentials mode: the gateway takes no
cookies, a page sends its token in ``Authorization``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.origins import origin_allowed
from gateway.transcode.metadata import HEADER_PREFIX, TRAILER_PREFIX
from gateway.transcode.rules import ANY_METHOD

# What pages send: the token, JSON, the idempotency key of /messages, the resume point of an
# event stream, and the trace context and request id the gateway forwards.
REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
        "traceparent",
        "tracestate",
        "x-request-id",
    }
)
# Request headers a browser sends without asking (Fetch, "CORS-safelisted request-header").
SAFELISTED = frozenset({"accept", "accept-language", "content-language"})
# The methods of a rule whose custom kind is "*".
ANY_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")
# Response headers a page may read beyond the safelisted ones.
EXPOSED = frozenset({"retry-after", "www-authenticate"})
MAX_AGE_S = 600
VARY = ("vary", "Origin")

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CorsPolicy:
    """Who may call from a browser page, and with which request headers (lower case)."""

    origins: frozenset[str]
    headers: frozenset[str] = REQUEST_HEADERS

    @classmethod
    def of(cls, origins: frozenset[str], forwarded: Iterable[str]) -> CorsPolicy:
        """The policy of ``ALLOWED_ORIGINS`` (parsed) and the back-ends' metadata names."""
        return cls(origins, REQUEST_HEADERS | {name.lower() for name in forwarded})

    @property
    def active(self) -> bool:
        """Without an allowed origin, the gateway answers no CORS at all."""
        return bool(self.origins)

    def allows(self, origin: str) -> bool:
        return origin.strip().lower() != "null" and origin_allowed(origin, self.origins)


@dataclass(frozen=True)
class PreflightAnswer:
    status: int
    text: str
    headers: Headers


def preflight(
    policy: CorsPolicy,
    origin: str,
    method: str,
    requested_headers: str,
    methods: Iterable[str],
) -> PreflightAnswer:
    """The answer to a preflight for a path whose routes have ``methods``."""
    if not policy.allows(origin):
        return PreflightAnswer(400, "Disallowed CORS origin", (VARY,))
    offered = allowed_methods(methods)
    failures = []
    if method not in offered:
        failures.append("method")
    asked = {h.strip().lower() for h in requested_headers.split(",") if h.strip()}
    if not asked <= policy.headers | SAFELISTED:
        failures.append("headers")
    headers: Headers = (
        ("access-control-allow-origin", origin),
        *((("access-control-allow-methods", ", ".join(offered)),) if offered else ()),
        ("access-control-allow-headers", ", ".join(sorted(policy.headers))),
        ("access-control-max-age", str(MAX_AGE_S)),
        VARY,
    )
    if failures:
        return PreflightAnswer(400, "Disallowed CORS " + ", ".join(failures), headers)
    return PreflightAnswer(200, "OK", headers)


def allowed_methods(methods: Iterable[str]) -> tuple[str, ...]:
    """``methods``, with a rule's ``*`` as every method, sorted, once each."""
    named: set[str] = set()
    for method in methods:
        named.update(ANY_METHODS if method == ANY_METHOD else (method,))
    return tuple(sorted(named))


def response_headers(policy: CorsPolicy, origin: str, names: Iterable[str]) -> Headers:
    """The CORS headers of an answer with the header ``names`` to a request from
    ``origin`` (``Vary`` only, when the origin is not allowed)."""
    if not policy.allows(origin):
        return (VARY,)
    exposed = sorted(
        {
            n.lower()
            for n in names
            if n.lower() in EXPOSED or n.lower().startswith((HEADER_PREFIX, TRAILER_PREFIX))
        }
    )
    headers: Headers = (("access-control-allow-origin", origin), VARY)
    if exposed:
        headers += (("access-control-expose-headers", ", ".join(exposed)),)
    return headers
