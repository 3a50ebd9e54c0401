"""Fixtures for the adapter component tests: a dev PKI, adapters started
in-process on port 0 behind real mutual TLS, mesh channels and Converse
sessions. Every wait has a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.base import AdapterConfig, ConverseServicer, RunningServer, start
from dialog.backend.v1 import backend_pb2, backend_pb2_grpc
from dialog.v1 import message_pb2
from gateway.certs import create_dev_certs

# The test helpers are imported as "tests.<package>" (tests/ has no __init__.py,
# so it is a namespace package found from the project root).
_PROJECT_DIR = str(Path(__file__).resolve().parents[2])
if _PROJECT_DIR not in sys.path:
    sys.path.insert(0, _PROJECT_DIR)

REPLY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0


def is_final(msg: message_pb2.Message) -> bool:
    """The test's own reading of the contract: not a delta, not an event."""
    return msg.content.type != "delta" and msg.role != message_pb2.ROLE_EVENT


def adapter_config(pki: Path, name: str, **overrides: Any) -> AdapterConfig:
    """Config for adapter ``name`` on 127.0.0.1, port 0, with certificates from ``pki``."""
    values: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "port": 0,
        "cert_file": str(pki / f"{name}.pem"),
        "key_file": str(pki / f"{name}-key.pem"),
        "ca_file": str(pki / "ca.pem"),
    }
    values.update(overrides)
    return AdapterConfig(**values)


class ConverseSession:
    """One Backend.Converse stream, driven the way the gateway drives it."""

    def __init__(self, channel: grpc.aio.Channel, user: str | None) -> None:
        stub = backend_pb2_grpc.BackendStub(channel)
        metadata = () if user is None else (("x-dialog-user", user),)
        self.call = stub.Converse(metadata=metadata)

    async def send(self, *messages: message_pb2.Message) -> None:
        """Send one batch."""
        await self.call.write(backend_pb2.ConverseRequest(messages=list(messages)))

    async def read(self, timeout_s: float = REPLY_TIMEOUT_S) -> list[message_pb2.Message]:
        """The next response batch; fails at the end of the stream."""
        async with asyncio.timeout(timeout_s):
            response = await self.call.read()
        if response is grpc.aio.EOF:
            raise AssertionError("the stream ended")
        return list(response.messages)

    async def until_final(
        self, ids: Iterable[str], timeout_s: float = REPLY_TIMEOUT_S
    ) -> dict[str, list[message_pb2.Message]]:
        """Every reply, by ``reply_to``, until each id in ``ids`` got its final reply."""
        pending = set(ids)
        replies: dict[str, list[message_pb2.Message]] = defaultdict(list)
        async with asyncio.timeout(timeout_s):
            while pending:
                for msg in await self.read(timeout_s):
                    replies[msg.context.reply_to].append(msg)
                    if is_final(msg):
                        pending.discard(msg.context.reply_to)
        return dict(replies)

    async def ask(self, *messages: message_pb2.Message) -> dict[str, list[message_pb2.Message]]:
        """Send one batch and wait for the final reply of each message."""
        await self.send(*messages)
        return await self.until_final(m.id for m in messages)


def user_message(
    msg_id: str,
    content_type: str = "text",
    text: str = "",
    *,
    service: str = "",
    entity: str = "",
    conversation_id: str = "c1",
    data: dict[str, Any] | None = None,
) -> message_pb2.Message:
    """A client message as the gateway forwards it."""
    msg = message_pb2.Message(id=msg_id, role=message_pb2.ROLE_USER)
    msg.content.type = content_type
    msg.content.text = text
    if data is not None:
        msg.content.data.update(data)
    msg.context.conversation_id = conversation_id
    msg.context.service = service
    msg.context.entity = entity
    return msg


@pytest.fixture
def adapter_pki(tmp_path: Path) -> Path:
    """A fresh development PKI: ca.pem, gateway-client*.pem, chat*.pem, tasks*.pem."""
    directory = tmp_path / "pki"
    create_dev_certs(directory)
    return directory


@pytest.fixture
async def adapter_runner(
    adapter_pki: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """``await run(servicer, name, **config) -> RunningServer``; stopped after the test."""
    running: list[RunningServer] = []

    async def run(servicer: ConverseServicer, name: str, **overrides: Any) -> RunningServer:
        server = await start(servicer, adapter_config(adapter_pki, name, **overrides))
        running.append(server)
        return server

    yield run
    for server in running:
        await server.stop(grace_s=0)


@pytest.fixture
async def mesh_channel(adapter_pki: Path) -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    """``open(port, server_name, *, identity="gateway-client", pki=adapter_pki)``.

    ``identity=None`` opens a TLS channel that presents no client certificate.
    Channels are closed after the test.
    """
    channels: list[grpc.aio.Channel] = []

    def open_channel(
        port: int,
        server_name: str,
        *,
        identity: str | None = "gateway-client",
        pki: Path | None = None,
    ) -> grpc.aio.Channel:
        directory = pki or adapter_pki
        ca = (adapter_pki / "ca.pem").read_bytes()
        if identity is None:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=(directory / f"{identity}-key.pem").read_bytes(),
                certificate_chain=(directory / f"{identity}.pem").read_bytes(),
            )
        options = [("grpc.ssl_target_name_override", server_name)]
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        await channel.close()


@pytest.fixture
def converse() -> Callable[[grpc.aio.Channel, str | None], ConverseSession]:
    """``converse(channel, user)`` opens a Converse stream as ``user`` (None: no metadata)."""
    return ConverseSession


@pytest.fixture
def make_message() -> Callable[..., message_pb2.Message]:
    """``make_message(id, content_type="text", text="", *, service, entity, data, ...)``."""
    return user_message


@pytest.fixture
def final_of() -> Callable[[list[message_pb2.Message]], message_pb2.Message]:
    """The one final reply among a request's replies, checked to be the last one."""

    def final(replies: list[message_pb2.Message]) -> message_pb2.Message:
        finals = [m for m in replies if is_final(m)]
        assert len(finals) == 1, f"expected exactly one final reply, got {len(finals)}"
        assert replies[-1] is finals[0], "the final reply must come last"
        return finals[0]

    return final
