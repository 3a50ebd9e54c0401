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
the new back-ends (they are stopped and started again around the swap), and so do the
Consul discovery loops (``ConsulDiscovery.follow``) and the queue workers
(``Redelivery.follow``).

A reload that changes the token keys (``AUTH_SETTINGS``, or new contents in the JWKS file)
builds a new ``Authenticator`` and loads its keys before anything is applied: keys that do
not load reject the whole reload, and the old ones stay. Once the rest is applied, the
authenticator in use adopts the new keys in one step.

What a reload changes is decided in ``gateway.reload_plan`` (pure); this module reads the
files and carries it out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gateway import metrics
from gateway.authenticator import Authenticator
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.consul import ConsulDiscovery
from gateway.discovery import consul_services
from gateway.grpc.reflection import BackendReflection
from gateway.health import HealthMonitor
from gateway.reload_plan import (
    LIVE_SETTINGS,
    Stamp,
    config_files,
    in_force,
    keys_reload,
    resolve,
    restart_only_changes,
)
from gateway.service import DialogService

__all__ = [
    "LIVE_SETTINGS",
    "ConfigReloader",
    "config_files",
    "in_force",
    "restart_only_changes",
    "watch_files",
]

log = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """A reload ready to apply: the configuration loaded and, when the token keys changed,
    the authenticator with the new ones (``keys_stamp``: the JWKS file they came from)."""

    config: GatewayConfig
    authenticator: Authenticator | None
    keys_stamp: Stamp


class ConfigReloader:
    """Runs the health monitor, the reflection follower and the Consul discovery, and
    reloads the configuration each time ``requested`` is set; ``run`` until cancelled."""

    def __init__(
        self,
        service: DialogService,
        env: Mapping[str, str],
        base_dir: Path,
        *,
        monitor: HealthMonitor,
        reflection: BackendReflection,
        discovery: ConsulDiscovery | None = None,
    ):
        self._service = service
        self._env = dict(env)
        self._base_dir = base_dir
        self._monitor = monitor
        self._reflection = reflection
        self._discovery = discovery
        # The JWKS file as it was when the keys in force were loaded.
        self._keys_stamp = self._jwks_stamp(service.config)

    async def run(self, requested: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            if self._discovery is not None:
                tasks.create_task(
                    self._discovery.run(self._discovered(requested)), name="consul-discovery"
                )
            while True:
                followers = [
                    tasks.create_task(self._monitor.run(), name="health-monitor"),
                    tasks.create_task(self._reflection.run(), name="backend-reflection"),
                ]
                prepared: _Prepared | None = None
                while prepared is None:
                    await requested.wait()
                    requested.clear()
                    prepared = await self._prepare()
                for follower in followers:
                    follower.cancel()
                await asyncio.gather(*followers, return_exceptions=True)
                await self._apply(prepared)

    def _discovered(self, requested: asyncio.Event) -> Callable[[str, tuple[str, ...]], None]:
        """What Consul discovery calls with a back-end's new set of instances: recorded in
        ``service.discovered``, and put in force by a reload (a changed back-end gets a new
        channel; calls on the old one finish)."""
        discovered = self._service.discovered

        def changed(backend: str, addresses: tuple[str, ...]) -> None:
            discovered[backend] = addresses
            requested.set()

        return changed

    async def _prepare(self) -> _Prepared | None:
        """The new configuration and, when its token keys changed, the authenticator with
        the new keys loaded; None (logged, counted) when either does not load."""
        try:
            loaded = await asyncio.to_thread(load_config, self._env, self._base_dir)
        except ConfigError as exc:
            self._reject(str(exc))
            return None
        current = self._service.config
        stamp = self._jwks_stamp(loaded)
        if not keys_reload(current, loaded, keys_stamp=self._keys_stamp, loaded_stamp=stamp):
            return _Prepared(loaded, None, self._keys_stamp)
        authenticator = Authenticator.from_config(
            loaded, base_dir=self._base_dir, clock=self._service.clock
        )
        try:
            await authenticator.load()
        except ConfigError as exc:
            self._reject(str(exc))
            return None
        return _Prepared(loaded, authenticator, stamp)

    async def _apply(self, prepared: _Prepared) -> None:
        service, loaded, authenticator = self._service, prepared.config, prepared.authenticator
        restart = restart_only_changes(service.config, loaded)
        # Addresses found for a service a back-end no longer follows say nothing about it.
        wanted = consul_services(loaded.routes)
        followed = self._discovery.services if self._discovery is not None else {}
        stale = {
            b: service.discovered.pop(b)
            for b in list(service.discovered)
            if followed.get(b) != wanted.get(b)
        }
        try:
            changes = service.apply_config(in_force(service.config, loaded))
        except OSError as exc:
            service.discovered.update(stale)
            if authenticator is not None:
                await authenticator.close()
            self._reject(f"cannot open a back-end channel: {exc}")
            return
        if authenticator is not None:
            await service.authenticator.adopt(authenticator)
            self._keys_stamp = prepared.keys_stamp
        await self._follow(wanted)
        routes = service.config.routes
        metrics.CONFIG_RELOADS.labels(result="applied").inc()
        log.info(
            "configuration reloaded: %s; %d rules, default back-end %s%s%s",
            changes.describe(),
            len(routes.rules),
            routes.default_backend or "(none)",
            "; token keys reloaded" if authenticator is not None else "",
            f"; needs a restart to change: {', '.join(restart)}" if restart else "",
        )

    async def _follow(self, consul: Mapping[str, str]) -> None:
        """Make the followers of the back-ends follow those in force now: health, reflection,
        Consul discovery (``consul``: back-end -> service) and the queue workers."""
        service = self._service
        routes = service.config.routes
        self._monitor.follow(service.pool.channels, {b.name: b.required for b in routes.backends})
        self._reflection.follow(routes)
        if self._discovery is not None:
            for backend in self._discovery.follow(consul):
                service.discovered.pop(backend, None)
        elif consul:
            log.warning(
                "consul: %s not followed: CONSUL_HTTP_ADDR was not set at start",
                ", ".join(consul),
            )
        if service.redelivery is not None:
            timeouts_s = {name: b.timeout_ms / 1000 for name, b in service.pool.configs.items()}
            await service.redelivery.follow(timeouts_s)

    def _jwks_stamp(self, config: GatewayConfig) -> Stamp:
        if not config.jwks_file:
            return None
        path = resolve(self._base_dir, config.jwks_file)
        return _stamps([path])[path]

    @staticmethod
    def _reject(reason: str) -> None:
        metrics.CONFIG_RELOADS.labels(result="rejected").inc()
        log.error("configuration reload rejected, keeping the current one: %s", reason)
