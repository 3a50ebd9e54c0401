"""The gateway process's shared state and the facade every surface uses: ``DialogService``.

Surfaces (gRPC, HTTP, WebSocket) only translate their transport into calls on
``DialogService`` and carry out what it returns. It builds and holds the pieces: the
message store and event hub, the routes and back-end pool, the drain, the durable queue's
redelivery, the process's count of work in flight (``InflightSlot``), who may call and
how much (``access``, ``gateway.access``), and the life of each message (``messages``,
``gateway.messages``: admit, forward, complete, queue, settle).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from opentelemetry.trace import Tracer

from gateway import metrics, tracing
from gateway.access import Access
from gateway.auth import Identity
from gateway.authenticator import Authenticator
from gateway.config import GatewayConfig
from gateway.discovery import with_discovered
from gateway.errors import ServerBusy, StoreUnavailable
from gateway.events import EventHub, Subscription
from gateway.forwarding import SharedUpstreams, Upstreams
from gateway.lifecycle import Drain
from gateway.messages import MessageLifecycle, new_id
from gateway.redelivery import Redelivery
from gateway.routing import RouteTable
from gateway.store import Store
from gateway.store.connect import connect_store
from gateway.upstream import BackendChanges, BackendPool

# Back-end streams kept between the requests of POST /messages and Gateway.Send: for
# this many users at most, each closed once idle this long.
SHARED_STREAMS_MAX_USERS = 1024
SHARED_STREAMS_IDLE_S = 60.0


class InflightSlot:
    """One relayed call's place in the process's work in flight: ``MAX_INFLIGHT`` counts
    dialog messages and relayed calls together, in ``DialogService.inflight``.

    Taken when built: a full process raises ``ServerBusy`` (counted as
    ``dialog_gateway_rate_limited_total{limit="inflight"}``, like a refused message);
    given back by the first ``release`` (later ones do nothing), or at the end of a
    ``with`` block. ``MAX_INFLIGHT`` is read per call, so a reload applies at once."""

    def __init__(self, service: DialogService, surface: str):
        service.check_inflight(surface)
        service.inflight += 1
        self._service: DialogService | None = service

    def release(self) -> None:
        if self._service is not None:
            service, self._service = self._service, None
            service.inflight -= 1

    def __enter__(self) -> InflightSlot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class DialogService:
    """Shared state and decisions of the gateway process."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        base_dir: Path = Path("."),
        clock: Callable[[], float] = time.time,
        tracer: Tracer = tracing.NO_TRACER,
    ):
        self.config = config
        # The addresses Consul reported, by back-end name (gateway.consul): they replace the
        # target of the file in every configuration put in force.
        self.discovered: dict[str, tuple[str, ...]] = {}
        self.clock = clock
        self.tracer = tracer
        self.base_dir = base_dir
        self.store: Store | None = None
        self.hub: EventHub | None = None
        self.redelivery: Redelivery | None = None
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{new_id()[:8]}"
        self.authenticator = Authenticator.from_config(config, base_dir=base_dir, clock=clock)
        self.access = Access(config, self.authenticator, store=self._open_store, clock=clock)
        self.messages = MessageLifecycle(self)
        self.inflight = 0
        # Back-end streams kept between requests (``request_upstreams``), also used to
        # deliver queued messages.
        self.shared_upstreams = SharedUpstreams(
            self._open_upstreams, max_users=SHARED_STREAMS_MAX_USERS, idle_s=SHARED_STREAMS_IDLE_S
        )
        self.drain = Drain(config.drain_timeout_s)
        self.routes = RouteTable.from_config(config.routes)
        self.pool = BackendPool(
            config.routes,
            max_message_bytes=config.max_message_bytes,
            base_dir=base_dir,
            breaker_failures=config.breaker_failures,
            breaker_open_ms=config.breaker_open_ms,
            retry_budget_ratio=config.retry_budget_ratio,
            retry_budget_min_per_s=config.retry_budget_min_per_s,
            tracer=tracer,
        )

    def apply_config(self, config: GatewayConfig) -> BackendChanges:
        """Take a reloaded configuration: its back-ends (``BackendPool.apply``), its routes,
        and the settings read from ``self.config`` at use time. All or nothing: on
        ``OSError`` (a certificate file of a new channel) nothing changed. Settings read
        once at start (listeners, TLS, tokens, store, ...) keep their old values until a
        restart (docs/mesh.md, "Reload"). The instances found by discovery
        (``self.discovered``) replace the targets of their back-ends."""
        routes = with_discovered(config.routes, self.discovered)
        config = dataclasses.replace(config, routes=routes)
        changes = self.pool.apply(config.routes, max_message_bytes=config.max_message_bytes)
        self.routes = RouteTable.from_config(config.routes)
        self.access.apply_config(config)
        self.config = config
        return changes

    async def start(self) -> None:
        """Open the message store and the event hub, start the queue workers, load the
        JWKS keys, if configured, and start their refresher."""
        config = self.config
        self.store = await connect_store(
            data_dir=self.base_dir / config.data_dir,
            redis_url=config.redis_url,
            max_attempts=config.max_delivery_attempts,
            sync=config.store_sync,
        )
        self.hub = EventHub(
            self.store,
            buffer_max=config.outbound_queue_max,
            log_max_len=config.event_log_max_len,
            log_max_age_s=config.event_log_max_age_s,
        )
        self.hub.start()
        self.redelivery = Redelivery(
            self.store,
            config,
            consumer=self.replica,
            timeouts_s={name: b.timeout_ms / 1000 for name, b in self.pool.configs.items()},
            deliver=self.messages.deliver_queued,
            dead=self.messages.report_dead,
            accepting=self.messages.delivering,
        )
        self.redelivery.start()
        await self.authenticator.start()

    async def close(self) -> None:
        await self.authenticator.close()
        await self.shared_upstreams.aclose()
        if self.redelivery is not None:
            await self.redelivery.close()
        if self.hub is not None:
            await self.hub.close()
        await self.pool.close()
        if self.store is not None:
            await self.store.close()

    def check_inflight(self, surface: str) -> None:
        """Refuse new work with ``ServerBusy`` once ``MAX_INFLIGHT`` messages and relayed
        calls are in flight."""
        if self.inflight >= self.config.max_inflight:
            metrics.RATE_LIMITED.labels(surface=surface, limit="inflight").inc()
            raise ServerBusy("the gateway is busy; try again shortly", retry_after_s=1)

    def hold_inflight(self, surface: str) -> InflightSlot:
        """A place in ``MAX_INFLIGHT`` for a relayed call (``check_inflight``), given back
        by its ``release`` or at the end of its ``with`` block."""
        return InflightSlot(self, surface)

    def upstreams(self, identity: Identity) -> Upstreams:
        """Back-end streams for one client connection."""
        return self._open_upstreams(identity.subject, identity.client)

    def request_upstreams(self, identity: Identity) -> AbstractAsyncContextManager[Upstreams]:
        """The user's back-end streams for one request, kept between requests."""
        return self.shared_upstreams.lease(identity.subject, identity.client)

    def _open_upstreams(self, user: str, client: str) -> Upstreams:
        return Upstreams(
            self.pool, user, client=client, reply_queue_max=self.config.outbound_queue_max
        )

    async def store_ok(self) -> bool:
        """True when the message store answers (for the health checks)."""
        return self.store is not None and await self.store.ping()

    def ready(self) -> tuple[Store, EventHub]:
        """The open message store and event hub; ``StoreUnavailable`` before ``start``."""
        if self.store is None or self.hub is None:
            raise StoreUnavailable("the message store is not open yet")
        return self.store, self.hub

    def _open_store(self) -> Store:
        store, _ = self.ready()
        return store

    async def subscribe(
        self, identity: Identity, after_seq: int = 0, owner: object | None = None
    ) -> Subscription:
        """The user's event stream after ``after_seq`` (0: from now on); its first
        message is a ``reset`` when that point was trimmed. Messages that ``owner`` (a
        connection) sends, passed to ``messages.admit`` as their ``origin``, are left out."""
        _, hub = self.ready()
        return await hub.subscribe(identity.subject, after_seq, owner)

    def unsubscribe(self, identity: Identity, sub: Subscription) -> None:
        if self.hub is not None:
            self.hub.unsubscribe(identity.subject, sub)
