"""Consul discovery: one blocking-query loop per back-end that names a ``consul_service``.

Each loop asks ``GET /v1/health/service/<name>?passing=true&index=<i>&wait=<n>s`` (Consul
HTTP API, "Health" and "Blocking Queries"), which answers when the service's health
changes or after the wait. The decisions (which instances, which index next, whether the
set changed) are ``gateway.discovery``'s; this module only moves the bytes, and hands each
new set of addresses to ``changed(backend, addresses)``, which puts it in force through the
configuration reload path (``gateway.server``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from urllib.parse import quote

import httpx

from gateway.config import GatewayConfig
from gateway.discovery import Found, compare, healthy_addresses, next_index, retry_delay_s

log = logging.getLogger(__name__)

# Consul adds up to wait/16 of jitter to a blocking query; the request deadline allows it.
DEADLINE_MARGIN_S = 5.0
# The first, non-blocking, query at start: how long the start waits for it.
FIRST_QUERY_TIMEOUT_S = 5.0

Changed = Callable[[str, tuple[str, ...]], None]


class ConsulError(Exception):
    """Consul did not give a usable answer."""


class ConsulDiscovery:
    """The healthy instances of each back-end's Consul service (``services``: back-end
    name → Consul service name), followed until cancelled (``run``)."""

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

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ConsulDiscovery | None:
        """The discovery of ``config``'s back-ends, or None when none names a service."""
        services = {b.name: b.consul_service for b in config.routes.backends if b.consul_service}
        if not services:
            return None
        return cls(
            config.consul_http_addr,
            services,
            token=config.consul_http_token,
            wait_s=config.consul_wait_s,
        )

    async def first(self) -> dict[str, tuple[str, ...]]:
        """One non-blocking query per back-end (failures are logged): the sets known now."""
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
            for backend in self._services:
                tasks.create_task(self._watch(client, backend, changed), name=f"consul:{backend}")

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._base,
            headers=self._headers,
            timeout=httpx.Timeout(self._wait_s + DEADLINE_MARGIN_S, connect=5.0),
            trust_env=False,
        )

    async def _watch(self, client: httpx.AsyncClient, backend: str, changed: Changed) -> None:
        failures = 0
        while True:
            try:
                found, index = await self._query(client, backend, self._index.get(backend, 0))
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
        self, client: httpx.AsyncClient, backend: str, index: int
    ) -> tuple[tuple[str, ...], int]:
        """The healthy addresses of ``backend``'s service and the next index."""
        service = quote(self._services[backend], safe="")
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
