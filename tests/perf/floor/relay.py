"""``python -m tests.perf.floor.relay PORT CERT KEY BACKEND CA CLIENT_CERT CLIENT_KEY``: the gRPC
relay floor (see the package).

Every call is relayed as raw bytes to ``BACKEND`` (host:port, server name ``chat``) over
mutual TLS, on one channel: ``/echo.Echo/Say`` with ``unary_unary``, every other method
with ``stream_stream``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvloop

UNARY = frozenset({"/echo.Echo/Say"})


class Relay(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        path = details.method
        if path in UNARY:
            call = self._channel.unary_unary(path)

            async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                return await call(request)  # type: ignore[no-any-return]

            return grpc.unary_unary_rpc_method_handler(unary)
        stream = self._channel.stream_stream(path)

        async def bidi(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            async for response in stream(requests):
                yield response

        return grpc.stream_stream_rpc_method_handler(bidi)


async def serve(port: str, server_pem: tuple[bytes, bytes], backend: str, client: Any) -> None:
    channel = grpc.aio.secure_channel(
        backend, client, options=[("grpc.ssl_target_name_override", "chat")]
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([Relay(channel)])
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([server_pem]))
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    port, cert, key, backend, ca, client_cert, client_key = sys.argv[1:]
    server_pem = (Path(key).read_bytes(), Path(cert).read_bytes())
    client = grpc.ssl_channel_credentials(
        Path(ca).read_bytes(), Path(client_key).read_bytes(), Path(client_cert).read_bytes()
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(port, server_pem, backend, client))


if __name__ == "__main__":
    main()
