"""Run the gateway process: the gRPC server, the HTTPS server and the health monitor.

SIGTERM and SIGINT drain the process (``gateway.lifecycle``): health turns NOT_SERVING,
new work is refused, work in flight finishes or is cancelled and reported at the
deadline, connections close, and ``serve`` returns within ``DRAIN_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.config import GatewayConfig
from gateway.consul import ConsulDiscovery
from gateway.discovery import with_discovered
from gateway.grpc.descriptors import Catalog
from gateway.grpc.reflection import BackendReflection
from gateway.grpc.server import build_grpc_server
from gateway.health import HealthMonitor
from gateway.http.app import build_admin_app, build_app
from gateway.http.protocol import guarded_protocol
from gateway.lifecycle import Drain
from gateway.listeners import http_listeners
from gateway.reload import ConfigReloader, config_files, watch_files
from gateway.service import DialogService
from gateway.tls import PublicTls, TlsFiles, reload_on_request
from gateway.tracing import Tracing, TracingConfig, start_tracing

log = logging.getLogger(__name__)
# uvicorn's last wait for its connections once the listeners close; by then the drain
# has ended them, and this only bounds a peer that does not finish the close.
LISTENER_GRACE_S = 1


class KeepaliveWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; a peer that misses its pong is dropped at once.

    On a missed pong uvicorn sends close 1011 and closes the transport gracefully, but
    over TLS a graceful close waits up to 30 s for the peer's close_notify, and until then
    the application does not learn that the connection is gone. A peer that did not answer
    a ping will not answer that either: the connection is failed (RFC 6455 section 7.1.7)
    by aborting the transport, which tells the application at once.
    """

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        if not self.disconnected:
            self.transport.abort()


class CloseWhileDraining:
    """ASGI wrapper: while the process drains, HTTP responses carry ``Connection: close``
    (RFC 9112 section 9.6), so that a client opens a new connection for its next request,
    which is then refused cleanly, instead of reusing one that the drain is about to close."""

    def __init__(self, app: ASGIApp, drain: Drain):
        self._app = app
        self._drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self._drain.draining:
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_closing)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway stops it. ``listening`` is set
    once its socket accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def http_config(
    config: GatewayConfig, app: object, ssl_context: ssl.SSLContext | None, *, port: int
) -> uvicorn.Config:
    """uvicorn's configuration; with ``ssl_context`` (from ``PublicTls``) it serves HTTPS."""
    tls = {}
    if ssl_context is not None:
        # uvicorn >= 0.47: the gateway builds the context (posture, client certificates,
        # reload) instead of uvicorn's file-based one.
        tls = {"ssl_context_factory": lambda _config, _default: ssl_context}
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=config.host,
        port=port,
        ws=KeepaliveWebSocketProtocol,
        http=guarded_protocol(config.max_header_bytes, config.head_timeout_ms / 1000),
        lifespan="off",
        log_config=None,
        access_log=False,
        ws_max_size=config.max_message_bytes,
        # permessage-deflate costs more CPU than it saves on short frames, and compressing
        # secrets next to attacker-chosen text leaks them (CRIME): off unless asked for.
        ws_per_message_deflate=config.ws_compression,
        # 0 turns keepalive pings off (interval) or never closes a silent peer (timeout).
        ws_ping_interval=float(config.ws_ping_interval_s) or None,
        ws_ping_timeout=float(config.ws_ping_timeout_s) or None,
        timeout_graceful_shutdown=LISTENER_GRACE_S,
        server_header=False,
        # The gateway is the edge: it never trusts X-Forwarded-* from a client.
        proxy_headers=False,
        limit_concurrency=config.max_connections,
        **tls,  # type: ignore[arg-type]
    )


async def serve(
    config: GatewayConfig,
    base_dir: Path = Path("."),
    ready: asyncio.Event | None = None,
    *,
    traces: TracingConfig | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then drain and return within ``DRAIN_TIMEOUT_S``;
    SIGHUP reloads the TLS certificates and, given the process's ``env`` (the one
    ``config`` was loaded from), the configuration (``gateway.reload``). Spans are exported
    as ``traces`` says (nowhere without it)."""
    # Read the certificates first: unusable files stop the start before anything opens.
    tls = PublicTls(TlsFiles.from_config(config, base_dir)) if config.tls else None
    # With several workers (WORKERS) the HTTP ports are shared: bound here, before anything
    # starts, with SO_REUSEPORT (which uvicorn does not set; gRPC does). By port; empty
    # with one worker, whose ports uvicorn binds as it always did.
    listeners = http_listeners(config)
    tracing = start_tracing(traces) if traces is not None else Tracing()
    discovery = ConsulDiscovery.from_config(config)
    found = await discovery.first() if discovery is not None else {}
    config = dataclasses.replace(config, routes=with_discovered(config.routes, found))
    service = DialogService(config, base_dir=base_dir, tracer=tracing.tracer)
    service.discovered.update(found)
    await service.start()
    health_servicer = health_aio.HealthServicer()
    monitor = HealthMonitor(
        service.pool.channels,
        {b.name: b.required for b in config.routes.backends},
        interval_ms=config.health_interval_ms,
        timeout_ms=config.health_timeout_ms,
        servicer=health_servicer,
        ready=service.authenticator.jwks_available,
        store=service.store_ok,
    )
    reflection = BackendReflection(
        service.pool.channels,
        config.routes,
        refresh_s=config.reflection_refresh_ms / 1000,
        timeout_s=config.reflection_timeout_ms / 1000,
    )
    grpc_server, grpc_port = build_grpc_server(
        service,
        health_servicer,
        reflection,
        credentials=tls.grpc_credentials() if tls else None,
    )
    servers = _http_servers(config, service, monitor, tls, reflection)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reload_requested = asyncio.Event()
    config_reload_requested = asyncio.Event()

    def on_sighup() -> None:
        reload_requested.set()
        if env is not None:  # without it, the configuration cannot be loaded again
            config_reload_requested.set()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if discovery is not None and env is None and discovery.services:
        # A reload needs the environment the configuration came from.
        log.warning("consul: the instances found at start stay: no environment to reload from")
    reloader = ConfigReloader(
        service,
        env or {},
        base_dir,
        monitor=monitor,
        reflection=reflection,
        # Followed from start, and through each reload (``ConsulDiscovery.follow``).
        discovery=discovery if env is not None else None,
    )
    await grpc_server.start()
    async with asyncio.TaskGroup() as tasks:
        stop_task = tasks.create_task(stop.wait(), name="stop-signal")
        background = [
            # The health monitor, the reflection follower and Consul discovery, which
            # follow each reload.
            tasks.create_task(reloader.run(config_reload_requested), name="config-reload"),
            tasks.create_task(reload_on_request(tls, reload_requested), name="tls-reload"),
            stop_task,
            *_file_watchers(
                tasks, config, service, base_dir, tls, reload_requested,
                config_reload_requested if env is not None else None,
            ),
        ]  # fmt: skip
        http_tasks = {
            tasks.create_task(
                server.serve(listeners.get(server.config.port)),
                name=f"http-server:{server.config.port}",
            )
            for server in servers
        }
        # Said (and ``ready`` set) once every listener accepts connections, or one failed.
        listening = tasks.create_task(_every_set(server.listening for server in servers))
        background.append(listening)  # cancelled at the end if a listener failed
        await asyncio.wait({listening, *http_tasks}, return_when=asyncio.FIRST_COMPLETED)
        scheme = "https" if config.tls else "http"
        log.info(
            "gateway listening: %s://%s:%d (HTTP, WebSocket) and %s:%d (gRPC)",
            scheme,
            config.host,
            config.port,
            config.host,
            grpc_port,
        )
        # What start-up allocated lives as long as the server: kept out of the collector's
        # generations while it serves, so that a full collection walks only what the
        # traffic allocates (otherwise a pause of milliseconds in the latency's tail).
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready.set()
        await asyncio.wait({stop_task, *http_tasks}, return_when=asyncio.FIRST_COMPLETED)
        await _drain(service.drain, health_servicer, grpc_server, servers)
        for task in background:
            task.cancel()
    gc.unfreeze()
    await service.close()
    await asyncio.to_thread(tracing.shutdown)  # exports the last spans


async def _every_set(events: Iterable[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


def _http_servers(
    config: GatewayConfig,
    service: DialogService,
    monitor: HealthMonitor,
    tls: PublicTls | None,
    reflection: BackendReflection,
) -> list[_HttpServer]:
    """The public HTTPS server, and the admin one when ``ADMIN_PORT`` is set. The public
    one transcodes the back-ends' methods that ``reflection`` describes."""
    context = tls.http_context if tls else None

    def catalog() -> Catalog:
        return reflection.catalog

    app = CloseWhileDraining(build_app(service, monitor, catalog), service.drain)
    servers = [_HttpServer(http_config(config, app, context, port=config.port))]
    if config.admin_port:
        admin = CloseWhileDraining(build_admin_app(service, monitor), service.drain)
        servers.append(_HttpServer(http_config(config, admin, None, port=config.admin_port)))
    return servers


async def _drain(
    drain: Drain,
    health_servicer: health_aio.HealthServicer,
    grpc_server: grpc.aio.Server,
    servers: list[_HttpServer],
) -> None:
    """Drain, then close the listeners with what is left of ``DRAIN_TIMEOUT_S``.

    The listeners stay open while the process drains, so that health checks see
    NOT_SERVING and new work gets a clear refusal instead of a refused connection.
    """
    drain.begin()
    # From now on the gRPC health service reports NOT_SERVING, whatever the monitor finds.
    await health_servicer.enter_graceful_shutdown()
    await drain.settle()
    await drain.connections_closed()
    log.info("closing the listeners")
    for server in servers:
        server.should_exit = True
    await grpc_server.stop(drain.remaining_s())


def _file_watchers(
    tasks: asyncio.TaskGroup,
    config: GatewayConfig,
    service: DialogService,
    base_dir: Path,
    tls: PublicTls | None,
    tls_changed: asyncio.Event,
    config_changed: asyncio.Event | None,
) -> list[asyncio.Task[None]]:
    """Reload on a file change as on SIGHUP, checked every ``CONFIG_WATCH_MS`` (0: never)."""
    interval_s = config.config_watch_ms / 1000
    if not interval_s:
        return []
    watchers = []
    if config_changed is not None:

        def files() -> list[Path]:
            return config_files(service.config, base_dir)  # a reload may move the routes file

        watchers.append(
            tasks.create_task(watch_files(files, config_changed, interval_s), name="config-watch")
        )
    if tls is not None:
        paths = [tls.files.cert_file, tls.files.key_file]
        if tls.files.client_ca_file is not None:
            paths.append(tls.files.client_ca_file)
        watchers.append(
            tasks.create_task(watch_files(lambda: paths, tls_changed, interval_s), name="tls-watch")
        )
    return watchers
