"""Run the gateway process: the gRPC server, the HTTPS server and the health monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from gateway.config import GatewayConfig
from gateway.grpc.server import build_grpc_server
from gateway.health import HealthMonitor
from gateway.http.app import build_app
from gateway.service import DialogService

log = logging.getLogger(__name__)
GRACE_S = 5.0


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _path(base_dir: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base_dir / p


def http_config(config: GatewayConfig, app: object, base_dir: Path) -> uvicorn.Config:
    tls = {}
    if config.tls:
        tls = {
            "ssl_certfile": str(_path(base_dir, config.tls_cert_file)),
            "ssl_keyfile": str(_path(base_dir, config.tls_key_file)),
        }
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=config.host,
        port=config.port,
        ws="websockets-sansio",
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=False,
        ws_max_size=config.max_message_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=int(GRACE_S),
        server_header=False,
        limit_concurrency=config.max_connections,
        **tls,  # type: ignore[arg-type]
    )


async def serve(
    config: GatewayConfig, base_dir: Path = Path("."), ready: asyncio.Event | None = None
) -> None:
    """Serve until SIGINT or SIGTERM."""
    service = DialogService(config, base_dir=base_dir)
    health_servicer = health_aio.HealthServicer()
    monitor = HealthMonitor(
        service.pool.channels,
        {b.name: b.required for b in config.routes.backends},
        interval_ms=config.health_interval_ms,
        timeout_ms=config.health_timeout_ms,
        servicer=health_servicer,
    )
    cert = _path(base_dir, config.tls_cert_file).read_bytes() if config.tls else b""
    key = _path(base_dir, config.tls_key_file).read_bytes() if config.tls else b""
    grpc_server, grpc_port = build_grpc_server(service, health_servicer, cert=cert, key=key)
    http = _HttpServer(http_config(config, build_app(service, monitor), base_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await grpc_server.start()
    async with asyncio.TaskGroup() as tasks:
        health_task = tasks.create_task(monitor.run(), name="health-monitor")
        http_task = tasks.create_task(http.serve(), name="http-server")
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
        await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        http.should_exit = True
        await grpc_server.stop(GRACE_S)
        health_task.cancel()
        stop_task.cancel()
    await service.close()
