"""The gateway's servers in the test's own process, on loopback (plain HTTP and gRPC): for
component tests that need the gateway's surfaces with real clients but read its state (its
``DialogService``, an in-memory span exporter) directly.

- ``serving_http``: an ASGI app on uvicorn with the gateway's settings (``http_config``);
- ``proxying_gateway``: one ``DialogService`` with its whole gRPC server (the transparent
  proxy included, knowing the back-end's methods from its reflection) and its HTTP app.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1.health import aio as health_aio
from opentelemetry.trace import Tracer

from gateway.config import BackendConfig, GatewayConfig
from gateway.grpc.reflection import BackendReflection
from gateway.grpc.server import build_grpc_server
from gateway.health import HealthMonitor
from gateway.http.app import build_app
from gateway.server import http_config
from gateway.service import DialogService
from gateway.tracing import NO_TRACER

REFLECTION_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn without signal handling: the test stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def monitor() -> HealthMonitor:
    """A health monitor that watches nothing (the tests do not read /health)."""
    return HealthMonitor({}, {}, interval_ms=1000, timeout_ms=1000)


@contextlib.asynccontextmanager
async def serving_http(config: GatewayConfig, app: object) -> AsyncIterator[str]:
    """``app`` served as the gateway serves it, on a free loopback port; its base URL."""
    http = _Server(http_config(config, app, None, port=0))
    # Listening before uvicorn starts: a client may connect at once (the backlog holds it).
    listener = socket.create_server(("127.0.0.1", 0))
    serving = asyncio.create_task(http.serve(sockets=[listener]), name="test-http")
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        http.should_exit = True
        await serving
        listener.close()


def probe_backend(name: str, port: int, pki: Path, timeout_ms: int) -> BackendConfig:
    """A back-end on ``port`` behind mutual TLS with the certificates in ``pki``
    (``create_dev_certs``: the gateway's client certificate, the server name ``chat``)."""
    return BackendConfig(
        name=name,
        target=f"127.0.0.1:{port}",
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "gateway-client.pem"),
        key_file=str(pki / "gateway-client-key.pem"),
        server_name="chat",
        timeout_ms=timeout_ms,
    )


@dataclass
class InProcessGateway:
    service: DialogService
    channel: grpc.aio.Channel  # to the gateway's gRPC port
    http_url: str


@contextlib.asynccontextmanager
async def proxying_gateway(
    config: GatewayConfig, base_dir: Path, backend: str, tracer: Tracer = NO_TRACER
) -> AsyncIterator[InProcessGateway]:
    """``config``'s gateway, which has learned ``backend``'s methods from its reflection."""
    service = DialogService(config, base_dir=base_dir, tracer=tracer)
    await service.start()
    reflection = BackendReflection(
        service.pool.channels, config.routes, refresh_s=3600, timeout_s=REFLECTION_TIMEOUT_S
    )
    await reflection.refresh(backend)
    grpc_server, grpc_port = build_grpc_server(
        service, health_aio.HealthServicer(), reflection, credentials=None
    )
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        app = build_app(service, monitor(), lambda: reflection.catalog)
        async with serving_http(config, app) as http_url:
            yield InProcessGateway(service, channel, http_url)
    finally:
        await channel.close()
        await grpc_server.stop(None)
        await service.close()
