"""Configuration: frozen dataclasses built once from config/*.json and the environment.

Environment variables override the JSON files (12-factor). Nothing else in the
project reads ``os.environ``: the CLI passes the environment in. Every invalid
value raises ``ConfigError`` with one line naming the variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.discovery import TargetError, target_addresses

WS_SUBPROTOCOL = "dialog.v1.json"
DEV_JWT_SECRET_PREFIX = "dev-"
DEV_JWT_SECRETS = frozenset({"change-me"})  # the placeholder of .env.example
STORE_SYNC_MODES = ("full", "normal")

# The public gRPC port's own services; no back-end may claim them, nor the back-end contract
# (a client reaches back-ends' Converse only through dialog.v1.Gateway), nor gRPC's own
# infrastructure services (health, reflection, channelz, ...: the "grpc." packages).
GATEWAY_SERVICES = (
    "dialog.v1.Gateway",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
)
BACKEND_CONTRACT_SERVICE = "dialog.backend.v1.Backend"
# Client metadata that never reaches a back-end, whatever a back-end's forward_metadata says:
# credentials, and the identity the gateway itself asserts.
UNFORWARDABLE_METADATA = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-dialog-user",
        "x-dialog-client",
    }
)
_SERVICE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_METADATA_NAME = re.compile(r"[0-9a-z_.-]+")


def is_reserved_service(name: str) -> bool:
    """Whether ``name`` is a service the gateway never proxies (see ``GATEWAY_SERVICES``)."""
    return name in GATEWAY_SERVICES or name == BACKEND_CONTRACT_SERVICE or name.startswith("grpc.")


class ConfigError(Exception):
    """A configuration value is missing or invalid."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry on UNAVAILABLE before anything was sent, with exponential back-off and jitter."""

    max_attempts: int = 3
    initial_backoff_ms: int = 100
    max_backoff_ms: int = 1000
    multiplier: float = 2.0


@dataclass(frozen=True)
class BackendConfig:
    """One named back-end reached over mutual TLS."""

    name: str
    target: str
    ca_file: str = "certs/ca.pem"
    cert_file: str = "certs/gateway-client.pem"
    key_file: str = "certs/gateway-client-key.pem"
    server_name: str = ""
    timeout_ms: int = 30000
    required: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # gRPC services proxied to this back-end from the public gRPC port, by full name (more
    # are learned from its server reflection); the scopes every proxied call to it requires,
    # and more by service ("pkg.Service") or method ("pkg.Service/Method"); client metadata
    # names forwarded on those calls beyond the default allowlist (gateway/grpc/proxy.py).
    services: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    method_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    forward_metadata: tuple[str, ...] = ()
    # The Consul service whose healthy instances are this back-end's addresses
    # (gateway/consul.py); ``target``, if also set, is used until Consul first answers.
    consul_service: str = ""

    def call_scopes(self, service: str, method: str) -> frozenset[str]:
        """Every scope a proxied call of ``service``/``method`` requires."""
        return frozenset(
            (
                *self.scopes,
                *self.method_scopes.get(service, ()),
                *self.method_scopes.get(f"{service}/{method}", ()),
            )
        )


@dataclass(frozen=True)
class RouteRule:
    """Send a message to ``backend`` when every given matcher equals the message's field."""

    backend: str
    service: str | None = None
    content_type: str | None = None
    scopes: tuple[str, ...] = ()  # token scopes required of the caller, all of them


@dataclass(frozen=True)
class RoutesConfig:
    """Named back-ends, ordered rules and the default back-end."""

    backends: tuple[BackendConfig, ...]
    rules: tuple[RouteRule, ...]
    default_backend: str | None

    def backend(self, name: str) -> BackendConfig:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway process needs. Field names carry their units."""

    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 50051
    tls: bool = True
    tls_cert_file: str = "certs/gateway.pem"
    tls_key_file: str = "certs/gateway-key.pem"
    jwt_secret: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: int = 30
    token_ttl_s: int = 900
    max_token_ttl_s: int = 3600
    jwks_file: str = ""
    jwks_url: str = ""
    jwks_ttl_s: int = 300
    jwks_refetch_cooldown_s: int = 30
    jwks_timeout_ms: int = 3000
    client_ca_file: str = ""
    client_cert_mode: str = "off"
    allowed_origins: str = ""
    ws_ticket_ttl_s: int = 30
    ws_message_rate_max: int = 50
    ws_message_rate_window_ms: int = 1000
    ws_rate_violations_max: int = 3
    max_header_bytes: int = 16384
    json_max_depth: int = 32
    max_inflight: int = 4096
    admin_port: int = 0
    metrics_token: str = ""
    max_ws_conn: int = 25
    rate_limit_max: int = 100
    rate_limit_window_ms: int = 60000
    max_message_bytes: int = 1048576
    health_interval_ms: int = 5000
    health_timeout_ms: int = 1000
    reflection_refresh_ms: int = 60000
    reflection_timeout_ms: int = 5000
    sse_heartbeat_ms: int = 15000
    outbound_queue_max: int = 256
    event_log_max_len: int = 1000
    event_log_max_age_s: int = 86400
    data_dir: str = "data"
    redis_url: str = ""
    store_sync: str = "full"
    dedup_ttl_s: int = 86400
    inflight_margin_ms: int = 30000
    config_watch_ms: int = 2000
    max_delivery_attempts: int = 5
    redelivery_initial_ms: int = 500
    redelivery_max_ms: int = 30000
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_s: int = 10
    breaker_failures: int = 5
    breaker_open_ms: int = 5000
    drain_timeout_s: int = 20
    ws_ping_interval_s: int = 20
    ws_ping_timeout_s: int = 20
    ws_compression: bool = False
    auth_timeout_ms: int = 10000
    body_timeout_ms: int = 10000
    head_timeout_ms: int = 10000
    max_connections: int = 1000
    workers: int = 1
    env: str = "development"
    log_level: str = "INFO"
    routes_file: str = "config/routes.json"
    consul_http_addr: str = ""
    consul_http_token: str = ""
    consul_wait_s: int = 60
    routes: RoutesConfig = field(
        default_factory=lambda: RoutesConfig(backends=(), rules=(), default_backend=None)
    )

    @property
    def rate_limit_window_s(self) -> float:
        return self.rate_limit_window_ms / 1000


_SCALAR_FIELDS = {f.name: f for f in dataclasses.fields(GatewayConfig) if f.name != "routes"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    """Turn a JSON or environment value into the field's type, or fail naming ``name``."""
    kind = getattr(kind, "__name__", kind)
    if isinstance(kind, str) and kind.endswith(" | None"):
        if raw is None:
            return None
        kind = kind.removesuffix(" | None")
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(raw)
        if kind in ("int", "float"):
            if isinstance(raw, bool) or (
                isinstance(raw, float) and kind == "int" and not raw.is_integer()
            ):
                raise ValueError(raw)
            value = int(raw) if kind == "int" else float(raw)
            if value < 0:
                raise ValueError(raw)
            return value
        if kind == "str":
            if not isinstance(raw, str | int):
                raise ValueError(raw)
            return str(raw)
        if kind == "tuple[str, ...]":
            # A JSON list of words (scope names): non-empty, without whitespace.
            if not isinstance(raw, list) or not all(
                isinstance(item, str) and item and not any(c.isspace() for c in item)
                for item in raw
            ):
                raise ValueError(raw)
            return tuple(raw)
        if kind == "Mapping[str, tuple[str, ...]]":
            if not isinstance(raw, dict):
                raise ValueError(raw)
            return {str(k): _coerce(f"{name}.{k}", v, "tuple[str, ...]") for k, v in raw.items()}
        raise ValueError(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: invalid value {raw!r} (expected {kind})") from None


def _build(cls: Any, values: Mapping[str, Any], source: str) -> Any:
    """A config dataclass from a mapping, each value coerced to its field's type."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r}")
    return cls(**{k: _coerce(f"{source}.{k}", v, fields[k].type) for k, v in values.items()})


def _read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: file not found") from None
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _load_routes(data: Mapping[str, Any], env: Mapping[str, str], source: str) -> RoutesConfig:
    backends = []
    for entry in data.get("backends", []):
        if (
            not isinstance(entry, dict)
            or "name" not in entry
            or not ("target" in entry or "consul_service" in entry)
        ):
            raise ConfigError(
                f"{source}: every backend needs a name and a target or a consul_service"
            )
        name = str(entry["name"])
        prefix = f"BACKEND_{name.upper().replace('-', '_')}_"
        where = f"{source}: backend {name!r}"
        retry = _build(RetryPolicy, entry.get("retry", {}), f"{where}.retry")
        values = {k: v for k, v in entry.items() if k != "retry"}
        unknown = set(values) - {f.name for f in dataclasses.fields(BackendConfig)}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        fields = {f.name: f for f in dataclasses.fields(BackendConfig)}
        coerced = {k: _coerce(f"{where}.{k}", v, fields[k].type) for k, v in values.items()}
        for key in ("target", "ca_file", "cert_file", "key_file", "server_name", "timeout_ms"):
            if prefix + key.upper() in env:
                coerced[key] = _coerce(
                    prefix + key.upper(), env[prefix + key.upper()], fields[key].type
                )
        coerced.setdefault("target", "")
        try:
            target_addresses(coerced["target"])
        except TargetError as exc:
            raise ConfigError(f"{where}.target: {exc}") from None
        if not coerced["target"] and not coerced.get("consul_service"):
            raise ConfigError(f"{where}.target: empty, and no consul_service")
        backends.append(BackendConfig(retry=retry, **coerced))
    _validate_proxying(backends, source)
    names = {b.name for b in backends}
    rules = []
    for entry in data.get("rules", []):
        rule = _build(RouteRule, entry, f"{source}: rule")
        if rule.backend not in names:
            raise ConfigError(f"{source}: rule names unknown backend {rule.backend!r}")
        rules.append(rule)
    default = env.get("DEFAULT_BACKEND", data.get("default_backend"))
    if default is not None and default not in names:
        raise ConfigError(f"DEFAULT_BACKEND: unknown backend {default!r}")
    return RoutesConfig(backends=tuple(backends), rules=tuple(rules), default_backend=default)


def _validate_proxying(backends: list[BackendConfig], source: str) -> None:
    """``services``, ``method_scopes`` and ``forward_metadata`` of every back-end: a service
    belongs to one back-end only, and none of the gateway's own can be claimed."""
    owner: dict[str, str] = {}
    for b in backends:
        where = f"{source}: backend {b.name!r}"
        for service in b.services:
            if not _SERVICE_NAME.fullmatch(service):
                raise ConfigError(f"{where}.services: {service!r} is not a full service name")
            if is_reserved_service(service):
                raise ConfigError(f"{where}.services: {service!r} is the gateway's own")
            if service in owner:
                raise ConfigError(
                    f"{where}.services: {service!r} already belongs to backend {owner[service]!r}"
                )
            owner[service] = b.name
        for name in b.forward_metadata:
            if not _METADATA_NAME.fullmatch(name) or name.startswith("grpc-"):
                raise ConfigError(f"{where}.forward_metadata: {name!r} is not a metadata name")
            if name in UNFORWARDABLE_METADATA:
                raise ConfigError(f"{where}.forward_metadata: {name!r} is never forwarded")
    for b in backends:
        where = f"{source}: backend {b.name!r}.method_scopes"
        for key in b.method_scopes:
            service, slash, method = key.partition("/")
            if not _SERVICE_NAME.fullmatch(service) or (
                slash and not _METHOD_NAME.fullmatch(method)
            ):
                raise ConfigError(f"{where}: {key!r} is not 'pkg.Service' or 'pkg.Service/Method'")
            if owner.get(service, b.name) != b.name:
                raise ConfigError(f"{where}: {service!r} belongs to backend {owner[service]!r}")


def load_config(env: Mapping[str, str], base_dir: Path = Path(".")) -> GatewayConfig:
    """Build the configuration: defaults < config/gateway.json < environment."""
    values: dict[str, Any] = {}
    for key, raw in _read_json(base_dir / "config" / "gateway.json").items():
        if key not in _SCALAR_FIELDS:
            raise ConfigError(f"config/gateway.json: unknown key {key!r}")
        values[key] = _coerce(key, raw, _SCALAR_FIELDS[key].type)
    for key, fld in _SCALAR_FIELDS.items():
        if key.upper() in env:
            values[key] = _coerce(key.upper(), env[key.upper()], fld.type)
    routes_path = Path(values.get("routes_file", GatewayConfig.routes_file))
    if not routes_path.is_absolute():
        routes_path = base_dir / routes_path
    explicit = "routes_file" in values
    routes = _load_routes(_read_json(routes_path, required=explicit), env, str(routes_path))
    config = GatewayConfig(**values, routes=routes)
    _validate(config)
    return config


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_auth(config: GatewayConfig) -> None:
    """Token keys and claims: see gateway/auth.py for how they are used."""
    if not (config.jwt_secret or config.jwks_file or config.jwks_url):
        raise ConfigError(
            "JWT_SECRET: no signing key configured: set JWT_SECRET, JWKS_FILE or JWKS_URL "
            "(run 'make run' to create .env)"
        )
    if config.jwks_file and config.jwks_url:
        raise ConfigError("JWKS_URL: set JWKS_FILE or JWKS_URL, not both")
    if config.jwks_url:
        try:
            url = urlsplit(config.jwks_url)
            _ = url.port  # raises ValueError on a bad port
        except ValueError:
            raise ConfigError("JWKS_URL: not a valid URL") from None
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ConfigError("JWKS_URL: expected an https:// URL")
        if url.scheme == "http" and not _is_loopback(url.hostname):
            raise ConfigError("JWKS_URL: must use https (plain http only to a loopback address)")
        if url.username is not None or url.password is not None:
            raise ConfigError("JWKS_URL: must not contain credentials")
    if config.env == "production" and config.jwt_secret:
        secret = config.jwt_secret
        if secret in DEV_JWT_SECRETS or secret.startswith(DEV_JWT_SECRET_PREFIX):
            raise ConfigError("JWT_SECRET: production refuses the development secret")
        if len(secret.encode()) < 32:
            raise ConfigError("JWT_SECRET: production needs a secret of at least 32 bytes")
    for name in ("max_token_ttl_s", "jwks_ttl_s", "jwks_refetch_cooldown_s", "jwks_timeout_ms"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name.upper()}: must be positive")


def _validate(config: GatewayConfig) -> None:
    _validate_auth(config)
    for name in ("port", "grpc_port"):
        if not 0 <= getattr(config, name) <= 65535:
            raise ConfigError(f"{name.upper()}: not a port number")
    if config.client_cert_mode not in ("off", "optional", "required"):
        raise ConfigError("CLIENT_CERT_MODE: expected off, optional or required")
    if config.store_sync not in STORE_SYNC_MODES:
        raise ConfigError("STORE_SYNC: expected full or normal")
    if config.client_cert_mode != "off" and not config.client_ca_file:
        raise ConfigError(f"CLIENT_CERT_MODE: {config.client_cert_mode} needs CLIENT_CA_FILE")
    if config.client_cert_mode != "off" and not config.tls:
        raise ConfigError(f"CLIENT_CERT_MODE: {config.client_cert_mode} needs TLS=on")
    for name in (
        "max_message_bytes",
        "rate_limit_max",
        "rate_limit_window_ms",
        "max_ws_conn",
        "max_connections",
        "body_timeout_ms",
        "event_log_max_len",
        "event_log_max_age_s",
        "max_delivery_attempts",
        "redelivery_initial_ms",
        "redelivery_max_ms",
        "breaker_failures",
        "breaker_open_ms",
        "drain_timeout_s",
        "inflight_margin_ms",
        "reflection_refresh_ms",
        "reflection_timeout_ms",
        "workers",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name.upper()}: must be positive")
    _validate_workers(config)
    _validate_consul(config)
    if not 0 <= config.retry_budget_ratio <= 1:
        raise ConfigError("RETRY_BUDGET_RATIO: expected a fraction between 0 and 1")
    for name in (
        "retry_budget_min_per_s",
        "ws_ping_interval_s",
        "ws_ping_timeout_s",
        "config_watch_ms",
    ):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name.upper()}: must not be negative")


def _validate_workers(config: GatewayConfig) -> None:
    """Several worker processes share their state through Redis only: the SQLite store's
    rate windows, connection counts and tickets are each process's own. They share the
    ports too, so a port cannot be left to the system to choose (0)."""
    if config.workers == 1:
        return
    if not config.redis_url:
        raise ConfigError(
            f"WORKERS: {config.workers} workers need REDIS_URL (rate limits, connection "
            "counts and tickets must be shared); set REDIS_URL or WORKERS=1"
        )
    for name in ("port", "grpc_port"):
        if not getattr(config, name):
            raise ConfigError(f"WORKERS: {config.workers} workers need a fixed {name.upper()}")


def _validate_consul(config: GatewayConfig) -> None:
    """``CONSUL_HTTP_ADDR`` is needed as soon as a back-end names a ``consul_service``."""
    discovered = [b.name for b in config.routes.backends if b.consul_service]
    if discovered and not config.consul_http_addr:
        raise ConfigError(
            f"CONSUL_HTTP_ADDR: not set, and backend {discovered[0]!r} has a consul_service"
        )
    if config.consul_http_addr:
        try:
            url = urlsplit(config.consul_http_addr)
            _ = url.port
        except ValueError:
            raise ConfigError("CONSUL_HTTP_ADDR: not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError("CONSUL_HTTP_ADDR: expected an http:// or https:// URL")
    if config.consul_wait_s <= 0:
        raise ConfigError("CONSUL_WAIT_S: must be positive")
