"""Run the gateway process: the gRPC server, the HTTPS server and the health monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from gateway.config import GatewayConfig
from gateway.grpc.server import build_grpc_server
from gateway.health import HealthMonitor
from gateway.http.app import build_admin_app, build_app
from gateway.http.protocol import guarded_protocol
from gateway.service import DialogService
from gateway.tls import PublicTls, TlsFiles, reload_on_request

log = logging.getLogger(__name__)
GRACE_S = 5.0


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
        ws="websockets-sansio",
        http=guarded_protocol(config.max_header_bytes, config.head_timeout_ms / 1000),
        lifespan="off",
        log_config=None,
        access_log=False,
        ws_max_size=config.max_message_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=int(GRACE_S),
        server_header=False,
        # The gateway is the edge: it never trusts X-Forwarded-* from a client.
        proxy_headers=False,
        limit_concurrency=config.max_connections,
        **tls,  # type: ignore[arg-type]
    )


async def serve(
    config: GatewayConfig, base_dir: Path = Path("."), ready: asyncio.Event | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP reloads the TLS certificates."""
    # Read the certificates first: unusable files stop the start before anything opens.
    tls = PublicTls(TlsFiles.from_config(config, base_dir)) if config.tls else None
    service = DialogService(config, base_dir=base_dir)
    await service.start()
    health_servicer = health_aio.HealthServicer()
    monitor = HealthMonitor(
        service.pool.channels,
        {b.name: b.required for b in config.routes.backends},
        interval_ms=config.health_interval_ms,
        timeout_ms=config.health_timeout_ms,
        servicer=health_servicer,
        ready=service.authenticator.jwks_available,
    )
    grpc_server, grpc_port = build_grpc_server(
        service, health_servicer, credentials=tls.grpc_credentials() if tls else None
    )
    context = tls.http_context if tls else None
    servers = [
        _HttpServer(http_config(config, build_app(service, monitor), context, port=config.port))
    ]
    if config.admin_port:
        admin = build_admin_app(service, monitor)
        servers.append(_HttpServer(http_config(config, admin, None, port=config.admin_port)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reload_requested = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    await grpc_server.start()
    async with asyncio.TaskGroup() as tasks:
        health_task = tasks.create_task(monitor.run(), name="health-monitor")
        http_tasks = {
            tasks.create_task(server.serve(), name=f"http-server:{server.config.port}")
            for server in servers
        }
        reload_task = tasks.create_task(reload_on_request(tls, reload_requested), name="tls-reload")
        scheme = "https" if config.tls else "http"
        log.info(
            "gateway listening: %s://%s:%d (HTTP, WebSocket) and %s:%d (gRPC)",
            scheme,
            config.host,
            config.port,
            config.host,
            grpc_port,
        )
        if ready is not None:
            ready.set()
        stop_task = tasks.create_task(stop.wait(), name="stop-signal")
        await asyncio.wait({stop_task, *http_tasks}, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        for server in servers:
            server.should_exit = True
        await grpc_server.stop(GRACE_S)
        health_task.cancel()
        reload_task.cancel()
        stop_task.cancel()
    await service.close()
