"""What a configuration reload changes, as data (pure): which settings a reload puts in
force, which need a restart, which files it is loaded from, and when the token keys must
be loaded again. ``gateway.reload`` carries it out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.config import GatewayConfig

# The settings of the token keys and claims (``Authenticator.from_config``): a reload that
# changes one builds a new authenticator and swaps it in once its keys are loaded.
AUTH_SETTINGS = frozenset(
    {
        "jwt_secret",
        "jwt_issuer",
        "jwt_audience",
        "jwt_leeway_s",
        "max_token_ttl_s",
        "jwks_file",
        "jwks_url",
        "jwks_ttl_s",
        "jwks_refetch_cooldown_s",
        "jwks_timeout_ms",
    }
)

# Settings read from ``DialogService.config`` each time they are used (per message, request
# or new connection), and the token keys (swapped by the reload): a reload changes them.
# Every other setting is read once at start.
LIVE_SETTINGS = frozenset(
    {
        "routes",
        "allowed_origins",
        "rate_limit_max",
        "rate_limit_window_ms",
        "max_inflight",
        "max_ws_conn",
        "ws_message_rate_max",
        "ws_message_rate_window_ms",
        "ws_rate_violations_max",
        "json_max_depth",
        "body_timeout_ms",
        "auth_timeout_ms",
        "sse_heartbeat_ms",
        "outbound_queue_max",
        "dedup_ttl_s",
        "inflight_margin_ms",
        "metrics_token",
        "routes_file",
        *AUTH_SETTINGS,
    }
)

# A file's modification time (ns) and size, or None when it cannot be read.
Stamp = tuple[int, int] | None


def restart_only_changes(current: GatewayConfig, loaded: GatewayConfig) -> tuple[str, ...]:
    """The settings outside ``LIVE_SETTINGS`` whose value differs (they need a restart)."""
    return tuple(
        f.name
        for f in dataclasses.fields(GatewayConfig)
        if f.name not in LIVE_SETTINGS and getattr(current, f.name) != getattr(loaded, f.name)
    )


def in_force(current: GatewayConfig, loaded: GatewayConfig) -> GatewayConfig:
    """What a reload puts in force: ``loaded``'s live settings, ``current``'s others (so
    that ``DialogService.config`` says what the process really does)."""
    kept = {name: getattr(current, name) for name in restart_only_changes(current, loaded)}
    return dataclasses.replace(loaded, **kept)


def resolve(base_dir: Path, name: str) -> Path:
    """``name`` as a path: absolute as it is, else under ``base_dir``."""
    path = Path(name)
    return path if path.is_absolute() else base_dir / path


def config_files(config: GatewayConfig, base_dir: Path) -> list[Path]:
    """The files a configuration is loaded from: config/gateway.json, the routes file, each
    back-end's CA, key and certificate (a rotated one gets a new channel), and the JWKS
    file (rotated token keys)."""
    names = [
        "config/gateway.json",
        config.routes_file,
        *(name for b in config.routes.backends for name in (b.ca_file, b.key_file, b.cert_file)),
        *([config.jwks_file] if config.jwks_file else []),
    ]
    return list(dict.fromkeys(resolve(base_dir, name) for name in names))


def keys_reload(
    current: GatewayConfig,
    loaded: GatewayConfig,
    *,
    keys_stamp: Stamp,
    loaded_stamp: Stamp,
) -> bool:
    """Whether a reload from ``current`` to ``loaded`` builds a new authenticator: a setting
    of ``AUTH_SETTINGS`` differs, or the JWKS file (the same one) was written since its
    keys were loaded (``keys_stamp``, then; ``loaded_stamp``, now). A JWKS URL is not
    fetched again for a reload that changes none of its settings: its refresher follows it
    (``JWKS_TTL_S``)."""
    if any(getattr(current, name) != getattr(loaded, name) for name in AUTH_SETTINGS):
        return True
    return bool(loaded.jwks_file) and keys_stamp != loaded_stamp
