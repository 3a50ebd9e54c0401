"""Mutual TLS from the gateway to a back-end: the real chat adapter (``adapters.runner.start``)
and the gateway's own ``BackendPool`` channel and ``BackendStream``. A wrong client
certificate, an expired one, a back-end certificate for another name or from another CA:
each makes the stream fail with UNAVAILABLE, and each case has a working control."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.chat.server import ChatServicer
from adapters.config import AdapterConfig
from adapters.runner import RunningServer, start
from dialog.v1 import message_pb2
from gateway.backend_stream import BackendStream, StreamFailed
from gateway.certs import create_dev_certs, issue_cert
from gateway.config import BackendConfig, RoutesConfig
from gateway.upstream import BackendPool

TIMEOUT_S = 10.0


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    create_dev_certs(directory)
    return directory


@pytest.fixture
def other_pki(tmp_path: Path) -> Path:
    """A second, unrelated development PKI."""
    directory = tmp_path / "other"
    create_dev_certs(directory)
    return directory


@pytest.fixture
async def chat_backend(pki: Path) -> AsyncIterator[Any]:
    """``await run(cert_stem="chat") -> port``: the chat adapter with that server certificate."""
    running: list[RunningServer] = []

    async def run(cert_stem: str = "chat") -> int:
        config = AdapterConfig(
            name="chat",
            port=0,
            cert_file=str(pki / f"{cert_stem}.pem"),
            key_file=str(pki / f"{cert_stem}-key.pem"),
            ca_file=str(pki / "ca.pem"),
        )
        server = await start(ChatServicer(), config)
        running.append(server)
        return server.port

    yield run
    for server in running:
        await server.stop(grace_s=0)


async def ask(port: int, pki: Path, **files: str) -> message_pb2.Message | StreamFailed:
    """Send one message to the back-end the way the gateway does; its final reply or failure."""
    backend = BackendConfig(
        name="chat",
        target=f"127.0.0.1:{port}",
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "gateway-client.pem"),
        key_file=str(pki / "gateway-client-key.pem"),
        server_name="chat",
        timeout_ms=int(TIMEOUT_S * 1000),
    )
    backend = dataclasses.replace(backend, **files)
    routes = RoutesConfig(backends=(backend,), rules=(), default_backend="chat")
    pool = BackendPool(routes, max_message_bytes=1 << 20, base_dir=pki)
    stream = BackendStream(pool.channels["chat"], "chat", "alice", reply_queue_max=16)
    try:
        msg = message_pb2.Message(id="m1", role=message_pb2.ROLE_USER)
        msg.content.type = "text"
        msg.content.text = "ping"
        replies = stream.submit(msg)
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                reply = await replies.get()
                if isinstance(reply, StreamFailed) or reply.content.type != "delta":
                    return reply
    finally:
        await stream.aclose()
        await pool.close()


def assert_unavailable(result: message_pb2.Message | StreamFailed) -> None:
    assert isinstance(result, StreamFailed), result
    assert result.code == grpc.StatusCode.UNAVAILABLE


async def test_control_the_gateway_client_certificate_works(pki: Path, chat_backend: Any) -> None:
    reply = await ask(await chat_backend(), pki)
    assert isinstance(reply, message_pb2.Message) and reply.content.text == "ping"


async def test_client_certificate_from_another_ca_fails(
    pki: Path, other_pki: Path, chat_backend: Any
) -> None:
    result = await ask(
        await chat_backend(),
        pki,
        cert_file=str(other_pki / "gateway-client.pem"),
        key_file=str(other_pki / "gateway-client-key.pem"),
    )
    assert_unavailable(result)


async def test_expired_client_certificate_fails(pki: Path, chat_backend: Any) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue_cert(
        pki, "expired-client", "dialog-gateway", server=False, client=True, now=past, valid_days=1
    )
    result = await ask(
        await chat_backend(),
        pki,
        cert_file=str(pki / "expired-client.pem"),
        key_file=str(pki / "expired-client-key.pem"),
    )
    assert_unavailable(result)


async def test_backend_certificate_for_another_name_fails(pki: Path, chat_backend: Any) -> None:
    issue_cert(pki, "elsewhere", "elsewhere", hosts=("elsewhere.internal",))
    port = await chat_backend("elsewhere")
    assert_unavailable(await ask(port, pki))  # server_name "chat" is not in its SAN
    control = await ask(port, pki, server_name="elsewhere.internal")
    assert isinstance(control, message_pb2.Message), control


async def test_server_name_of_another_backend_fails(pki: Path, chat_backend: Any) -> None:
    # The chat certificate is valid and from the mesh CA, but names chat, not tasks.
    assert_unavailable(await ask(await chat_backend(), pki, server_name="tasks"))


async def test_backend_certificate_from_another_ca_fails(
    pki: Path, other_pki: Path, chat_backend: Any
) -> None:
    port = await chat_backend()
    assert_unavailable(await ask(port, pki, ca_file=str(other_pki / "ca.pem")))
