"""The public gRPC server: ``dialog.v1.Gateway``, ``grpc.health.v1.Health`` and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from dialog.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.config import GatewayConfig
from gateway.grpc.servicer import GatewayServicer
from gateway.service import DialogService


def build_grpc_server(
    service: DialogService, health_servicer: health_aio.HealthServicer, *, cert: bytes, key: bytes
) -> tuple[grpc.aio.Server, int]:
    """Create the server and bind its port; returns it with the bound port."""
    config: GatewayConfig = service.config
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10000),
        ]
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
    if config.tls:
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(address)
    return server, port
