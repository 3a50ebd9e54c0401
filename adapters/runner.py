"""Run an adapter's gRPC server: mutual TLS, health, reflection, graceful stop.

Back-ends accept only connections that present a client certificate signed by
the mesh CA (``require_client_auth=True``). ``start`` binds and starts a server
and reports the bound port (tests pass port 0); ``serve`` runs one until
SIGTERM or SIGINT, then stops it gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
from grpc_health.v1 import _async as health_aio  # the grpc.aio health servicer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapters.config import AdapterConfig
from adapters.servicer import ConverseServicer
from dialog.backend.v1 import backend_pb2, backend_pb2_grpc

logger = logging.getLogger(__name__)

BACKEND_SERVICE_NAME: str = backend_pb2.DESCRIPTOR.services_by_name["Backend"].full_name
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
DEFAULT_GRACE_S = 5.0

# Adds one more service to the server (a generated ``add_*Servicer_to_server``, bound).
AddService = Callable[[grpc.aio.Server], None]


class HealthStatus(Protocol):
    """The part of the grpc.aio health servicer this module uses."""

    async def set(self, service: str, status: Any) -> None: ...
    async def enter_graceful_shutdown(self) -> None: ...


@dataclass(frozen=True)
class RunningServer:
    """A started adapter server and the port it is bound to."""

    server: grpc.aio.Server
    port: int
    health: HealthStatus

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Report NOT_SERVING, then stop, letting calls finish within ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path!r} ({exc.strerror})") from None


def server_credentials(config: AdapterConfig) -> grpc.ServerCredentials:
    """Mutual-TLS credentials: our certificate, and client certificates from the mesh CA."""
    prefix = config.env_prefix
    key = _read(config.key_file, f"{prefix}_KEY_FILE")
    cert = _read(config.cert_file, f"{prefix}_CERT_FILE")
    ca = _read(config.ca_file, "MESH_CA_FILE")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def server_options(config: AdapterConfig) -> list[tuple[str, int]]:
    """Message size limits, and keepalive so dead peers of idle streams are noticed."""
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A second process on the same port must fail to start, not share it.
        ("grpc.so_reuseport", 0),
    ]


async def start(
    servicer: ConverseServicer,
    config: AdapterConfig,
    *,
    service_names: Sequence[str] = (BACKEND_SERVICE_NAME,),
    add_services: Sequence[AddService] = (),
) -> RunningServer:
    """Bind ``config.address`` with mutual TLS, register every service and start.

    ``add_services`` register services beyond the Backend one. ``service_names``
    are reported SERVING by the health service (as is "") and listed by
    reflection, with the health and reflection services themselves.
    """
    credentials = server_credentials(config)
    server = grpc.aio.server(options=server_options(config))
    add_backend = cast("Any", backend_pb2_grpc).add_BackendServicer_to_server
    add_backend(servicer, server)
    for add_service in add_services:
        add_service(server)
    health = cast("HealthStatus", health_aio.HealthServicer())
    cast("Any", health_pb2_grpc).add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*service_names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_secure_port(config.address, credentials)
    except RuntimeError as exc:
        raise OSError(f"{config.env_prefix}_PORT: cannot bind {config.address}") from exc
    if port == 0:
        raise OSError(f"{config.env_prefix}_PORT: cannot bind {config.address}")
    for name in ("", *service_names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    logger.info("adapter listening", extra={"adapter": config.name, "port": port})
    return RunningServer(server=server, port=port, health=health)


async def serve(
    servicer: ConverseServicer,
    config: AdapterConfig,
    *,
    service_names: Sequence[str] = (BACKEND_SERVICE_NAME,),
    add_services: Sequence[AddService] = (),
    grace_s: float = DEFAULT_GRACE_S,
) -> None:
    """Run the adapter until SIGTERM or SIGINT, then stop within ``grace_s``."""
    running = await start(
        servicer, config, service_names=service_names, add_services=add_services
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        logger.info("adapter stopping", extra={"adapter": config.name})
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await running.stop(grace_s)
