"""The public gRPC server: ``dialog.v1.Gateway``, ``grpc.health.v1.Health`` and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from dialog.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.config import GatewayConfig
from gateway.grpc.interceptors import AuthenticatedReflection
from gateway.grpc.servicer import GatewayServicer
from gateway.service import DialogService

MAX_STREAMS_PER_CONNECTION = 100


def build_grpc_server(
    service: DialogService,
    health_servicer: health_aio.HealthServicer,
    *,
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, int]:
    """Create the server and bind its port, with TLS ``credentials`` (from
    ``gateway.tls.PublicTls``) or in plaintext when None; returns it with the bound port."""
    config: GatewayConfig = service.config
    server = grpc.aio.server(
        interceptors=[AuthenticatedReflection(service)],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ("grpc.max_metadata_size", config.max_header_bytes),
            # Keepalive enforcement: a client pinging more often than every 10 s
            # without data is sent GOAWAY after two strikes.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10000),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_time_ms", 60000),
            ("grpc.keepalive_timeout_ms", 20000),
            ("grpc.max_connection_idle_ms", 300000),
        ],
    )
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = f"{config.host}:{config.grpc_port}"
    if credentials is not None:
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    return server, port
