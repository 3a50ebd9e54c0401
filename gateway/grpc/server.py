"""The public gRPC server: ``dialog.v1.Gateway``, ``grpc.health.v1.Health``, reflection, and
every routed back-end service.

The gateway's own services are registered first; ``BackendProxy`` (``gateway.grpc.proxy``)
comes last and relays every other call to the back-end that serves its service. Server
reflection (``gateway.grpc.reflection``) describes both: the gateway's own services and
every back-end's, learned from the back-ends' own reflection by ``BackendReflection``.

``DrainGate`` applies the process's drain (``gateway.lifecycle``) to ``dialog.v1.Gateway``:
once it has begun, new calls are refused with UNAVAILABLE; a ``Converse`` stream goes on
reading (each new message is refused on its own) until the drain closes, then ends with
UNAVAILABLE once its messages in flight are answered; a ``Subscribe`` stream ends with
UNAVAILABLE when the drain closes. Health and reflection keep answering meanwhile; proxied
calls apply the drain themselves (``gateway.grpc.proxy``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from dialog.v1 import gateway_pb2_grpc
from gateway.config import GatewayConfig
from gateway.errors import Draining
from gateway.grpc.descriptors import Catalog
from gateway.grpc.errors import Context, abort
from gateway.grpc.interceptors import AuthenticatedReflection
from gateway.grpc.proxy import BackendProxy
from gateway.grpc.reflection import BackendReflection, ReflectionServicer, add_reflection
from gateway.grpc.servicer import GatewayServicer
from gateway.lifecycle import REFUSED, Drain, Phase
from gateway.service import DialogService

MAX_STREAMS_PER_CONNECTION = 100
GATEWAY_PREFIX = "/dialog.v1.Gateway/"
# Subscriptable in the type stubs only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class DrainGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """``dialog.v1.Gateway`` calls during the drain (see the module docstring)."""

    def __init__(self, drain: Drain):
        self._drain = drain

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(GATEWAY_PREFIX):
            return handler
        if self._drain.draining:
            return _refusal(handler)
        if method == GATEWAY_PREFIX + "Converse":
            return grpc.stream_stream_rpc_method_handler(
                self._converse(handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if method == GATEWAY_PREFIX + "Subscribe":
            return grpc.unary_stream_rpc_method_handler(
                self._subscribe(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler

    def _converse(self, behavior: Any) -> Any:
        drain = self._drain

        async def converse(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            # The requests end when the drain closes: the servicer then answers what is in
            # flight, and ends.
            async for response in behavior(drain.until(Phase.CLOSING, requests), context):
                yield response
            if drain.phase is Phase.CLOSING:
                await abort(context, Draining(REFUSED))

        return converse

    def _subscribe(self, behavior: Any) -> Any:
        drain = self._drain

        async def subscribe(request: Any, context: Context) -> AsyncIterator[Any]:
            async for response in drain.until(Phase.CLOSING, behavior(request, context)):
                yield response
            if drain.phase is Phase.CLOSING:
                await abort(context, Draining(REFUSED))

        return subscribe


def _refusal(handler: Handler) -> Handler:
    """A handler of the same shape as ``handler`` that refuses the call: the drain began."""

    async def refuse(request: Any, context: Context) -> None:
        await abort(context, Draining(REFUSED, retry_after_s=1))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse, handler.request_deserializer, handler.response_serializer
    )


def build_grpc_server(
    service: DialogService,
    health_servicer: health_aio.HealthServicer,
    reflection: BackendReflection,
    *,
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, int]:
    """Create the server and bind its port, with TLS ``credentials`` (from
    ``gateway.tls.PublicTls``) or in plaintext when None; returns it with the bound port.

    Reflection and the proxy read ``reflection.catalog``; the caller runs ``reflection``."""
    config: GatewayConfig = service.config
    server = grpc.aio.server(
        interceptors=[AuthenticatedReflection(service), DrainGate(service.drain)],
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

    def catalog() -> Catalog:
        return reflection.catalog

    add_reflection(ReflectionServicer(catalog), server)
    # Last: the proxy takes every call the gateway's own services do not.
    server.add_generic_rpc_handlers((BackendProxy(service, catalog),))
    address = f"{config.host}:{config.grpc_port}"
    if credentials is not None:
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    return server, port
