"""Every Prometheus collector of the gateway, with fixed, bounded labels.

Labels name a surface, a method, a back-end, a code or a reason: never a raw
path or a user id.

With several worker processes (``WORKERS`` > 1) the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: prometheus_client then keeps every
value in a file there, and ``/metrics`` adds up those of every worker, whichever worker
answers. A gauge says how its workers' values combine (``multiprocess_mode``: the sum of
the open connections, the lowest "up", the highest "stale" or breaker state). That mode
has no exemplars; one worker's output is as it always was.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
# What ``/metrics`` shows: this process's collectors, or with several workers those of
# every worker (``expose_every_worker``).
_exposed = REGISTRY

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

REQUEST_SECONDS = Histogram(
    "dialog_gateway_request_duration_seconds",
    "Time to handle one client request, by surface (grpc, http, ws), method and result code.",
    ["surface", "method", "code"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BACKEND_SECONDS = Histogram(
    "dialog_gateway_backend_call_duration_seconds",
    "Time from forwarding a message to a back-end until its final reply, by back-end and code.",
    ["backend", "code"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
FIRST_REPLY_SECONDS = Histogram(
    "dialog_gateway_time_to_first_reply_seconds",
    "Time from accepting a message until its first reply from the back-end.",
    ["backend"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
WS_CONNECTIONS = Gauge(
    "dialog_gateway_websocket_connections",
    "Open WebSocket connections.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
MESSAGES = Counter(
    "dialog_gateway_messages_total",
    "Messages accepted from clients, by surface and back-end.",
    ["surface", "backend"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "dialog_gateway_auth_failures_total",
    "Refused credentials, by surface and reason.",
    ["surface", "reason"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "dialog_gateway_rate_limited_total",
    "Requests refused by a limit, by surface and limit.",
    ["surface", "limit"],
    registry=REGISTRY,
)
BACKEND_UP = Gauge(
    "dialog_gateway_backend_up",
    "1 when the back-end's health check reports SERVING, else 0.",
    ["backend"],
    multiprocess_mode="livemin",
    registry=REGISTRY,
)

AUTH_REASONS = {
    "missing bearer token": "missing",
    "authorization must be 'Bearer <token>'": "malformed",
    "malformed token": "malformed",
    "token algorithm not allowed": "algorithm",
    "token expired": "expired",
    "invalid token": "invalid",
    "token has no subject": "invalid",
    "token type not allowed": "typ",
    "key id not allowed with HS256": "algorithm",
    "token algorithm does not match its key": "algorithm",
    "token has no key id": "unknown_key",
    "unknown signing key": "unknown_key",
    "token not yet valid": "not_yet_valid",
    "token lifetime too long": "ttl",
    "token issuer not accepted": "issuer",
    "token audience not accepted": "audience",
}


def auth_reason(message: str) -> str:
    """A bounded label for an authentication failure message."""
    return AUTH_REASONS.get(message, "other")


JWKS_REFRESHES = Counter(
    "dialog_gateway_jwks_refresh_total",
    "JWKS fetches, by trigger (startup, ttl, unknown_kid) and result (ok, timeout, "
    "unreachable, http_status, too_large, invalid, error).",
    ["trigger", "result"],
    registry=REGISTRY,
)
JWKS_KEYS = Gauge(
    "dialog_gateway_jwks_keys",
    "Usable keys in the JWKS key set in use (the last good one during an outage).",
    multiprocess_mode="livemin",
    registry=REGISTRY,
)
JWKS_LAST_SUCCESS = Gauge(
    "dialog_gateway_jwks_last_success_timestamp_seconds",
    "Unix time of the last successful JWKS fetch; 0 before the first.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
JWKS_STALE = Gauge(
    "dialog_gateway_jwks_stale",
    "1 while the last JWKS fetch failed (the last good keys, if any, stay in use), else 0.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

DUPLICATES = Counter(
    "dialog_gateway_duplicates_suppressed_total",
    "Repeated message ids answered from the stored outcome instead of being forwarded again.",
    ["surface"],
    registry=REGISTRY,
)

EVENT_LOG_READS = Counter(
    "dialog_event_log_reads_total",
    "Reads of a user's event log by a subscriber catching up (resume, other replicas, lag)",
    registry=REGISTRY,
)

ENTITY_ORDER = Counter(
    "dialog_entity_messages_total",
    "Messages with context.entity and seq, by the ordering verdict",
    ["verdict"],
    registry=REGISTRY,
)

BACKEND_STREAMS = Counter(
    "dialog_backend_streams_opened_total",
    "Backend.Converse streams opened (one per connection, or per user between requests)",
    ["backend"],
    registry=REGISTRY,
)

QUEUED = Counter(
    "dialog_messages_queued_total",
    "Messages kept in the durable inbound queue because their back-end was unavailable",
    ["backend"],
    registry=REGISTRY,
)

REDELIVERIES = Counter(
    "dialog_redeliveries_total",
    "Deliveries of queued messages, by outcome (delivered, failed, dead)",
    ["backend", "outcome"],
    registry=REGISTRY,
)

BREAKER_STATE = Gauge(
    "dialog_backend_breaker_state",
    "State of the back-end's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["backend"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "dialog_backend_breaker_transitions_total",
    "State changes of the back-end's circuit breaker, by the state entered "
    "(closed, half_open, open).",
    ["backend", "state"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "dialog_backend_retries_total",
    "Retries to a back-end, by the retry budget's decision (allowed, denied).",
    ["backend", "outcome"],
    registry=REGISTRY,
)

DRAINING = Gauge(
    "dialog_gateway_draining",
    "1 while the gateway drains before it stops (SIGTERM or SIGINT), else 0.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
DRAIN_CANCELLED = Counter(
    "dialog_gateway_drain_cancelled_total",
    "Messages still waiting for their back-end at the drain deadline: cancelled, and "
    "reported to their clients as errors.",
    registry=REGISTRY,
)

STORE_UP = Gauge(
    "dialog_gateway_store_up",
    "1 while the message store (SQLite or Redis) answers the health check, else 0",
    multiprocess_mode="livemin",
    registry=REGISTRY,
)

# Calls the public gRPC port proxies to back-ends (gateway/grpc/proxy.py), with the names and
# labels of grpc-ecosystem's server metrics: grpc_type is unary, client_stream, server_stream or
# bidi_stream; grpc_service is a routed service; grpc_method is a method its descriptor names
# (grpc_type and grpc_method are "unknown" for a method no merged descriptor describes);
# grpc_code is a status code name (OK, UNAVAILABLE, ...).
GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "Proxied gRPC calls started on the public port.",
    ["grpc_type", "grpc_service", "grpc_method"],
    registry=REGISTRY,
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "Proxied gRPC calls completed on the public port, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
    registry=REGISTRY,
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of a proxied gRPC call until its status was sent.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "dialog_gateway_config_reloads_total",
    "Configuration reloads (SIGHUP or a change of the config files), by result "
    "(applied, rejected).",
    ["result"],
    registry=REGISTRY,
)


def expose_every_worker(directory: str) -> None:
    """Make ``/metrics`` show the values of every worker process, which prometheus_client
    keeps in ``directory`` (the ``PROMETHEUS_MULTIPROC_DIR`` this process started with)."""
    global _exposed
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    _exposed = registry


def exposed_registry() -> CollectorRegistry:
    """The registry ``/metrics`` encodes."""
    return _exposed
