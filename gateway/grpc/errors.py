"""Map the gateway's errors onto gRPC status codes (the one place it happens)."""

from __future__ import annotations

from typing import Any

import grpc

from gateway.errors import DialogError

Context = grpc.aio.ServicerContext[Any, Any]


def status_of(error: DialogError) -> grpc.StatusCode:
    return grpc.StatusCode[error.grpc_status]


async def abort(context: Context, error: DialogError) -> None:
    """End the call with the error's status; its message is safe to show."""
    trailers = [(f"x-dialog-{k.replace('_', '-')}", str(v)) for k, v in error.details.items()]
    if error.retry_after_s is not None:
        trailers.append(("retry-after", str(max(1, round(error.retry_after_s)))))
    if trailers:
        context.set_trailing_metadata(tuple(trailers))
    await context.abort(status_of(error), error.message)
