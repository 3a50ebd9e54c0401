"""Hot reload of routes, back-ends and limits, on SIGHUP and when a configuration file
changes (``watch_files``, every ``CONFIG_WATCH_MS``).

A reload builds a complete new ``GatewayConfig`` with ``load_config`` from the environment
the process started with. A configuration that does not load is rejected with one log
line, and the one in force stays, untouched. One that loads is applied at once
(``DialogService.apply_config``): a new route table, channels for back-ends added or
changed, the channels of back-ends removed closed (their calls in flight end with
``BackendRemoved``), and the settings read at use time (``LIVE_SETTINGS``). The others keep
their values until a restart; the log line of the reload names those that changed. Open
WebSocket, SSE and gRPC connections stay open: their back-end streams move to the new
channels with their next message. The health monitor and the back-ends' reflection follow
the new back-ends (they are stopped and started again around the swap).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gateway import metrics
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.grpc.reflection import BackendReflection
from gateway.health import HealthMonitor
from gateway.service import DialogService

log = logging.getLogger(__name__)

# Settings read from ``DialogService.config`` each time they are used (per message, request
# or new connection): a reload changes them. Every other setting is read once at start.
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
        "jwt_leeway_s",
        "metrics_token",
        "routes_file",
    }
)


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


Stamp = tuple[int, int] | None


def _stamps(paths: Sequence[Path]) -> dict[Path, Stamp]:
    stamps: dict[Path, Stamp] = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            stamps[path] = None
        else:
            stamps[path] = (stat.st_mtime_ns, stat.st_size)
    return stamps


async def watch_files(
    files: Callable[[], Sequence[Path]], changed: asyncio.Event, interval_s: float
) -> None:
    """Set ``changed`` each time one of ``files()`` is written, replaced, created or
    removed (its modification time or size differs), checked every ``interval_s``."""
    seen = _stamps(files())
    while True:
        await asyncio.sleep(interval_s)
        now = _stamps(files())
        if now != seen:
            seen = now
            changed.set()


def config_files(config: GatewayConfig, base_dir: Path) -> list[Path]:
    """The files a configuration is loaded from: config/gateway.json, the routes file, and
    each back-end's CA, key and certificate (a rotated one gets a new channel)."""

    def resolve(name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else base_dir / path

    names = [
        "config/gateway.json",
        config.routes_file,
        *(name for b in config.routes.backends for name in (b.ca_file, b.key_file, b.cert_file)),
    ]
    return list(dict.fromkeys(resolve(name) for name in names))


class ConfigReloader:
    """Runs the health monitor and the reflection follower, and reloads the configuration
    each time ``requested`` is set; ``run`` until cancelled."""

    def __init__(
        self,
        service: DialogService,
        env: Mapping[str, str],
        base_dir: Path,
        *,
        monitor: HealthMonitor,
        reflection: BackendReflection,
    ):
        self._service = service
        self._env = dict(env)
        self._base_dir = base_dir
        self._monitor = monitor
        self._reflection = reflection

    async def run(self, requested: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            while True:
                followers = [
                    tasks.create_task(self._monitor.run(), name="health-monitor"),
                    tasks.create_task(self._reflection.run(), name="backend-reflection"),
                ]
                loaded: GatewayConfig | None = None
                while loaded is None:
                    await requested.wait()
                    requested.clear()
                    loaded = await self._load()
                for follower in followers:
                    follower.cancel()
                await asyncio.gather(*followers, return_exceptions=True)
                self._apply(loaded)

    async def _load(self) -> GatewayConfig | None:
        """The new configuration, or None (logged, counted) when it does not load."""
        try:
            return await asyncio.to_thread(load_config, self._env, self._base_dir)
        except ConfigError as exc:
            self._reject(str(exc))
            return None

    def _apply(self, loaded: GatewayConfig) -> None:
        service = self._service
        restart = restart_only_changes(service.config, loaded)
        try:
            changes = service.apply_config(in_force(service.config, loaded))
        except OSError as exc:
            self._reject(f"cannot open a back-end channel: {exc}")
            return
        routes = service.config.routes
        self._monitor.follow(service.pool.channels, {b.name: b.required for b in routes.backends})
        self._reflection.follow(routes)
        metrics.CONFIG_RELOADS.labels(result="applied").inc()
        log.info(
            "configuration reloaded: %s; %d rules, default back-end %s%s",
            changes.describe(),
            len(routes.rules),
            routes.default_backend or "(none)",
            f"; needs a restart to change: {', '.join(restart)}" if restart else "",
        )

    @staticmethod
    def _reject(reason: str) -> None:
        metrics.CONFIG_RELOADS.labels(result="rejected").inc()
        log.error("configuration reload rejected, keeping the current one: %s", reason)
