"""What the gateway tells a back-end about the caller: the token's subject and, when the
client presented a verified certificate, its identity — and nothing a client sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dialog.backend.v1 import backend_pb2, backend_pb2_grpc
from dialog.v1 import message_pb2
from gateway.certs import create_dev_certs
from gateway.config import BackendConfig, RoutesConfig
from gateway.forwarding import Upstreams
from gateway.upstream import BackendPool


class MetadataRecorder(backend_pb2_grpc.BackendServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def Converse(
        self, requests: AsyncIterator[backend_pb2.ConverseRequest], context: Any
    ) -> AsyncIterator[backend_pb2.ConverseResponse]:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        async for request in requests:
            for msg in request.messages:
                reply = message_pb2.Message(role=message_pb2.ROLE_ASSISTANT)
                reply.content.type = "text"
                reply.context.reply_to = msg.id
                yield backend_pb2.ConverseResponse(messages=[reply])


@pytest.mark.parametrize(("client", "expected"), [("cert:alice", "cert:alice"), ("", None)])
async def test_backend_sees_the_user_and_the_client_certificate(
    tmp_path: Path, client: str, expected: str | None
) -> None:
    create_dev_certs(tmp_path)
    recorder = MetadataRecorder()
    server = grpc.aio.server()
    backend_pb2_grpc.add_BackendServicer_to_server(recorder, server)
    creds = grpc.ssl_server_credentials(
        [((tmp_path / "chat-key.pem").read_bytes(), (tmp_path / "chat.pem").read_bytes())],
        root_certificates=(tmp_path / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    backend = BackendConfig(
        name="chat",
        target=f"127.0.0.1:{port}",
        ca_file=str(tmp_path / "ca.pem"),
        cert_file=str(tmp_path / "gateway-client.pem"),
        key_file=str(tmp_path / "gateway-client-key.pem"),
        server_name="chat",
    )
    pool = BackendPool(
        RoutesConfig(backends=(backend,), rules=(), default_backend="chat"),
        max_message_bytes=1 << 20,
        base_dir=tmp_path,
    )
    upstreams = Upstreams(pool, "alice", client=client, reply_queue_max=16)
    try:
        msg = message_pb2.Message(id="m1")
        msg.content.type = "text"
        replies = [r async for r in upstreams.forward("chat", msg)]
        assert replies[-1].context.reply_to == "m1"
    finally:
        await upstreams.aclose()
        await pool.close()
        await server.stop(None)
    [seen] = recorder.metadata
    assert seen["x-dialog-user"] == "alice"
    assert seen.get("x-dialog-client") == expected
