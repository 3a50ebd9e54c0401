"""gRPC server interceptors of the public port.

``AuthenticatedReflection`` serves server reflection only to callers with a
valid token, so that the API's shape is not public. The health service stays
public; ``dialog.v1.Gateway`` authenticates in its servicer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.errors import DialogError
from gateway.grpc.errors import Context, status_of
from gateway.service import DialogService

REFLECTION_PREFIX = "/grpc.reflection."
SURFACE = "grpc"


def _header(details: grpc.HandlerCallDetails, name: str) -> list[str]:
    return [str(v) for k, v in details.invocation_metadata or () if k == name]


def _refusal(error: DialogError) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request_iterator: Any, context: Context) -> None:
        await context.abort(status_of(error), error.message)

    return grpc.stream_stream_rpc_method_handler(refuse)


class AuthenticatedReflection(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses server reflection to callers without a valid bearer token."""

    def __init__(self, service: DialogService):
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler_call_details.method.startswith(REFLECTION_PREFIX):
            try:
                await self._service.access.authenticate(
                    _header(handler_call_details, "authorization"), SURFACE
                )
            except DialogError as exc:
                return _refusal(exc)
        return await continuation(handler_call_details)
