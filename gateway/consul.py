"""Consul discovery: one blocking-query loop per back-end that names a ``consul_service``.

Each loop asks ``GET /v1/health/service/<name>?passing=true&index=<i>&wait=<n>s`` (Consul
HTTP API, "Health" and "Blocking Queries"), which answers when the service's health
changes or after the wait. The decisions (which instances, which index next, whether the
set changed) are ``gateway.discovery``'s; this module only moves the bytes, and hands each
new set of addresses to ``changed(backend, addresses)``, which puts it in force through the
configuration reload path (``gateway.reload``). A reload hands the back-ends it put in force
to ``follow``: loops start for back-ends added (or given another service) and stop for those
removed, while ``run`` goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping
from urllib.parse import quote

import httpx

from gateway.config import GatewayConfig
from gateway.discovery import (
    Found,
    compare,
    consul_services,
    healthy_addresses,
    next_index,
    retry_delay_s,
    watch_changes,
)

log = logging.getLogger(__name__)

# Consul adds up to wait/16 of jitter to a blocking query; the request deadline allows it.
DEADLINE_MARGIN_S = 5.0
# The first, non-blocking, query at start: how long the start waits for it.
FIRST_QUERY_TIMEOUT_S = 5.0

Changed = Callable[[str, tuple[str, ...]], None]


class ConsulError(Exception):
    """Consul did not give a usable answer."""


@dataclasses.dataclass(frozen=True)
class _Running:
    """What the loops of a running ``ConsulDiscovery.run`` share."""

    client: httpx.AsyncClient
    tasks: asyncio.TaskGroup
    changed: Changed


class ConsulDiscovery:
    """The healthy instances of each back-end's Consul service (``services``: back-end
    name -> Consul service name), followed until cancelled (``run``); ``follow`` changes
    the back-ends followed."""

    def __init__(
        self,
        addr: str,
        services: Mapping[str, str],
        *,
        token: str = "",
        wait_s: int = 60,
        rand: Callable[[], float] = random.random,
    ):
        self._base = addr.rstrip("/")
        self._services = dict(services)
        self._headers = {"X-Consul-Token": token} if token else {}
        self._wait_s = wait_s
        self._rand = rand
        self.addresses: dict[str, tuple[str, ...]] = {}
        self._index: dict[str, int] = {}
        self._running: _Running | None = None
        self._watches: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ConsulDiscovery | None:
        """The discovery of ``config``'s back-ends, or None when Consul is not configured
        (no ``CONSUL_HTTP_ADDR``: then no back-end names a service, at start or later)."""
        if not config.consul_http_addr:
            return None
        return cls(
            config.consul_http_addr,
            consul_services(config.routes),
            token=config.consul_http_token,
            wait_s=config.consul_wait_s,
        )

    @property
    def services(self) -> dict[str, str]:
        """The back-ends followed: back-end name -> Consul service name."""
        return dict(self._services)

    async def first(self) -> dict[str, tuple[str, ...]]:
        """One non-blocking query per back-end (failures are logged): the sets known now."""
        if not self._services:
            return {}
        async with self._client() as client:
            await asyncio.gather(
                *(self._first(client, backend) for backend in self._services),
            )
        return dict(self.addresses)

    async def _first(self, client: httpx.AsyncClient, backend: str) -> None:
        try:
            async with asyncio.timeout(FIRST_QUERY_TIMEOUT_S):
                self._take(backend, *await self._query(client, backend, index=0))
        except (ConsulError, TimeoutError) as exc:
            log.warning("consul: no instances of %s yet: %s", backend, exc)

    async def run(self, changed: Changed) -> None:
        """Follow every back-end's service until cancelled; ``changed`` gets each new set."""
        async with self._client() as client, asyncio.TaskGroup() as tasks:
            self._running = _Running(client, tasks, changed)
            try:
                for backend in self._services:
                    self._start(backend)
                await asyncio.Event().wait()  # until cancelled; ``follow`` changes the loops
            finally:
                self._running = None
                self._watches.clear()

    def follow(self, services: Mapping[str, str]) -> tuple[str, ...]:
        """Follow ``services`` (back-end name -> Consul service name) from now on: stop the
        loops of back-ends no longer named (or naming another service) and forget what
        they found, start loops for the new ones (at once when ``run`` is running). The
        back-ends whose addresses are forgotten are returned."""
        changes = watch_changes(self._services, services)
        for backend in changes.stop:
            task = self._watches.pop(backend, None)
            if task is not None:
                task.cancel()
            self.addresses.pop(backend, None)
            self._index.pop(backend, None)
        self._services = dict(services)
        if self._running is not None:
            for backend in changes.start:
                self._start(backend)
        for backend in changes.stop:
            if backend not in self._services:
                log.info("consul: no longer following %s", backend)
        for backend in changes.start:
            log.info("consul: following %s (service %s)", backend, self._services[backend])
        return changes.stop

    def _start(self, backend: str) -> None:
        running = self._running
        assert running is not None
        self._watches[backend] = running.tasks.create_task(
            self._watch(running.client, backend, self._services[backend], running.changed),
            name=f"consul:{backend}",
        )

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._base,
            headers=self._headers,
            timeout=httpx.Timeout(self._wait_s + DEADLINE_MARGIN_S, connect=5.0),
            trust_env=False,
        )

    async def _watch(
        self, client: httpx.AsyncClient, backend: str, service: str, changed: Changed
    ) -> None:
        failures = 0
        while True:
            try:
                found, index = await self._query(
                    client, backend, self._index.get(backend, 0), service=service
                )
            except ConsulError as exc:
                failures += 1
                delay_s = retry_delay_s(failures, self._rand())
                log.warning(
                    "consul: query for %s failed (%s), again in %.1fs", backend, exc, delay_s
                )
                await asyncio.sleep(delay_s)
                continue
            failures = 0
            previous = self._index.get(backend, 0)
            if self._take(backend, found, index) is Found.CHANGED:
                changed(backend, self.addresses[backend])
            if index <= previous:
                # Same index (a wait that timed out) or a reset: Consul's docs ask clients
                # to rate-limit such loops; a short pause is enough.
                await asyncio.sleep(0.1)

    def _take(self, backend: str, found: tuple[str, ...], index: int) -> Found:
        self._index[backend] = index
        outcome = compare(self.addresses.get(backend), found)
        if outcome is Found.EMPTY:
            log.warning(
                "consul: no healthy instance of %s; keeping the last known ones: %s",
                backend,
                ", ".join(self.addresses.get(backend, ())) or "(none)",
            )
        elif outcome is Found.CHANGED:
            log.info("consul: instances of %s: %s", backend, ", ".join(found))
            self.addresses[backend] = found
        return outcome

    async def _query(
        self, client: httpx.AsyncClient, backend: str, index: int, *, service: str = ""
    ) -> tuple[tuple[str, ...], int]:
        """The healthy addresses of ``backend``'s service (``service``, by default the one
        it follows now) and the next index."""
        service = quote(service or self._services[backend], safe="")
        params = {"passing": "true", "index": str(index), "wait": f"{self._wait_s}s"}
        try:
            response = await client.get(f"/v1/health/service/{service}", params=params)
            response.raise_for_status()
            found, skipped = healthy_addresses(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise ConsulError(str(exc) or type(exc).__name__) from exc
        if skipped:
            log.info("consul: %d instance(s) of %s skipped (unusable or failing)", skipped, backend)
        return found, next_index(index, response.headers.get("X-Consul-Index"))
