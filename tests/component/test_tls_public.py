"""``gateway.tls.PublicTls`` behind real listeners on loopback: an asyncio TLS server with
its ``http_context`` (what uvicorn serves with) and a ``grpc.aio`` server with its
``grpc_credentials()``. Certificates are swapped on reload for new handshakes while open
connections and streams keep working; client certificates are enforced per mode."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from gateway.certs import GATEWAY_HOSTS, create_dev_certs, issue_cert, issue_client_cert
from gateway.grpc.peer import client_cert_identity
from gateway.tls import PublicTls, TlsFiles, TlsFilesInvalid, identity_from_subject

TIMEOUT_S = 10.0


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A development PKI with a client certificate for ``alice``."""
    directory = tmp_path / "pki"
    create_dev_certs(directory)
    issue_client_cert(directory, "alice")
    return directory


def files(pki: Path, mode: str = "off") -> TlsFiles:
    ca = pki / "ca.pem" if mode != "off" else None
    return TlsFiles(pki / "gateway.pem", pki / "gateway-key.pem", ca, mode)


def rotate(pki: Path) -> int:
    """A new gateway certificate from the same CA; returns its serial number."""
    issued = issue_cert(pki, "gateway", "dialog-gateway-rotated", hosts=GATEWAY_HOSTS)
    return x509.load_pem_x509_certificate(issued.cert_pem).serial_number


def serial_of(pki: Path, stem: str = "gateway") -> int:
    return x509.load_pem_x509_certificate((pki / f"{stem}.pem").read_bytes()).serial_number


def client_context(pki: Path, identity: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if identity is not None:
        context.load_cert_chain(pki / f"{identity}.pem", pki / f"{identity}-key.pem")
    return context


def der_serial(der: bytes | None) -> int:
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --- the HTTPS side: an asyncio server with the context uvicorn is given ---------------------


@dataclass
class LineServer:
    """Answers each line with the connection's client identity (``-`` without one)."""

    port: int

    async def connect(self, context: ssl.SSLContext) -> Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("localhost", self.port, ssl=context), TIMEOUT_S
        )
        return Connection(reader, writer)


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def server_serial(self) -> int:
        return der_serial(self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True))

    async def ask(self, line: str) -> str:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()
        answer = await asyncio.wait_for(self.reader.readline(), TIMEOUT_S)
        if not answer:
            raise ConnectionError("closed by the server")
        return answer.decode().strip()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("ssl_object").getpeercert()
    identity = identity_from_subject(peer["subject"]) if peer else "-"
    try:
        while line := await reader.readline():
            writer.write(f"{identity} {line.decode().strip()}\n".encode())
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def line_server() -> AsyncIterator[Callable[[PublicTls], Any]]:
    servers: list[asyncio.Server] = []

    async def start(tls: PublicTls) -> LineServer:
        server = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=tls.http_context)
        servers.append(server)
        return LineServer(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def refused(server: LineServer, context: ssl.SSLContext) -> bool:
    """True when the server ends the connection in or right after the handshake (TLS 1.3
    clients finish their side before the server has checked their certificate)."""
    try:
        connection = await server.connect(context)
        await connection.ask("hello")
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    await connection.close()
    return False


async def test_reload_serves_the_new_certificate_and_keeps_open_connections(
    pki: Path, line_server: Any
) -> None:
    tls = PublicTls(files(pki))
    server = await line_server(tls)
    old = await server.connect(client_context(pki))
    assert old.server_serial == serial_of(pki)
    assert await old.ask("one") == "- one"

    new_serial = rotate(pki)
    fresh = await server.connect(client_context(pki))
    assert fresh.server_serial != new_serial  # nothing changes before the reload
    await fresh.close()

    loaded = await asyncio.to_thread(tls.reload)
    assert loaded.serial == new_serial
    fresh = await server.connect(client_context(pki))
    assert fresh.server_serial == new_serial
    assert await fresh.ask("two") == "- two"
    assert await old.ask("three") == "- three"  # the open connection is untouched
    for connection in (old, fresh):
        await connection.close()


async def test_failed_reload_keeps_the_current_certificate(pki: Path, line_server: Any) -> None:
    tls = PublicTls(files(pki))
    server = await line_server(tls)
    before = serial_of(pki)
    # A certificate with another certificate's key: the pair does not match.
    (pki / "gateway-key.pem").write_bytes((pki / "chat-key.pem").read_bytes())
    with pytest.raises(TlsFilesInvalid, match=r"^TLS_"):
        await asyncio.to_thread(tls.reload)
    (pki / "gateway.pem").write_text("not a certificate")
    with pytest.raises(TlsFilesInvalid, match=r"^TLS_CERT_FILE"):
        await asyncio.to_thread(tls.reload)
    connection = await server.connect(client_context(pki))
    assert connection.server_serial == before
    assert await connection.ask("still") == "- still"
    await connection.close()


def test_unusable_files_stop_the_start_naming_the_variable(pki: Path) -> None:
    missing = TlsFiles(pki / "none.pem", pki / "gateway-key.pem", None, "off")
    with pytest.raises(TlsFilesInvalid, match=r"^TLS_CERT_FILE: cannot read"):
        PublicTls(missing)
    no_ca = TlsFiles(pki / "gateway.pem", pki / "gateway-key.pem", pki / "none.pem", "required")
    with pytest.raises(TlsFilesInvalid, match=r"^CLIENT_CA_FILE: cannot read"):
        PublicTls(no_ca)


async def test_required_mode_refuses_handshakes_without_a_valid_certificate(
    pki: Path, line_server: Any, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    create_dev_certs(other)
    issue_client_cert(other, "mallory")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue_client_cert(pki, "expired", now=past, valid_days=1)
    server = await line_server(PublicTls(files(pki, "required")))

    assert await refused(server, client_context(pki))
    assert await refused(server, client_context(pki, "expired"))
    foreign = client_context(pki)
    foreign.load_cert_chain(other / "mallory.pem", other / "mallory-key.pem")
    assert await refused(server, foreign)
    connection = await server.connect(client_context(pki, "alice"))
    assert await connection.ask("hi") == "cert:alice hi"
    await connection.close()


async def test_optional_mode_accepts_no_certificate_but_refuses_an_invalid_one(
    pki: Path, line_server: Any
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue_client_cert(pki, "expired", now=past, valid_days=1)
    server = await line_server(PublicTls(files(pki, "optional")))
    anonymous = await server.connect(client_context(pki))
    assert await anonymous.ask("hi") == "- hi"
    assert await refused(server, client_context(pki, "expired"))
    alice = await server.connect(client_context(pki, "alice"))
    assert await alice.ask("hi") == "cert:alice hi"
    for connection in (anonymous, alice):
        await connection.close()


async def test_reload_replaces_the_client_ca(pki: Path, line_server: Any, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_dev_certs(other)
    issue_client_cert(other, "bob")
    tls = PublicTls(files(pki, "required"))
    server = await line_server(tls)
    bob = client_context(pki)
    bob.load_cert_chain(other / "bob.pem", other / "bob-key.pem")
    assert await refused(server, bob)
    (pki / "ca.pem").write_bytes((other / "ca.pem").read_bytes() + (pki / "ca.pem").read_bytes())
    await asyncio.to_thread(tls.reload)
    connection = await server.connect(bob)
    assert await connection.ask("hi") == "cert:bob hi"
    await connection.close()


# --- the gRPC side: grpc.aio with the dynamic credentials ------------------------------------


async def _who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return (client_cert_identity(context) or "-").encode()


async def _echo(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


HANDLERS = grpc.method_handlers_generic_handler(
    "test.Peer",
    {
        "Who": grpc.unary_unary_rpc_method_handler(_who),
        "Echo": grpc.stream_stream_rpc_method_handler(_echo),
    },
)


@pytest.fixture
async def grpc_server() -> AsyncIterator[Callable[[PublicTls], Any]]:
    servers: list[grpc.aio.Server] = []

    async def start(tls: PublicTls) -> int:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([HANDLERS])
        port = server.add_secure_port("127.0.0.1:0", tls.grpc_credentials())
        await server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(0)


def grpc_channel(pki: Path, port: int, identity: str | None = None) -> grpc.aio.Channel:
    key = (pki / f"{identity}-key.pem").read_bytes() if identity else None
    chain = (pki / f"{identity}.pem").read_bytes() if identity else None
    credentials = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes(), key, chain)
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def who(channel: grpc.aio.Channel) -> str:
    answer = await channel.unary_unary("/test.Peer/Who")(b"", timeout=TIMEOUT_S)
    return bytes(answer).decode()


def grpc_port_serial(pki: Path, port: int) -> int:
    """The serial of the certificate a new handshake on the gRPC port presents."""
    context = client_context(pki)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return der_serial(tls.getpeercert(binary_form=True))


async def test_grpc_reload_serves_the_new_certificate_and_keeps_open_streams(
    pki: Path, grpc_server: Any
) -> None:
    tls = PublicTls(files(pki))
    port = await grpc_server(tls)
    async with grpc_channel(pki, port) as channel:
        stream = channel.stream_stream("/test.Peer/Echo")()
        await stream.write(b"one")
        assert await asyncio.wait_for(stream.read(), TIMEOUT_S) == b"one"
        assert await asyncio.to_thread(grpc_port_serial, pki, port) == serial_of(pki)

        new_serial = rotate(pki)
        assert await asyncio.to_thread(grpc_port_serial, pki, port) != new_serial
        await asyncio.to_thread(tls.reload)
        assert await asyncio.to_thread(grpc_port_serial, pki, port) == new_serial
        assert await asyncio.to_thread(grpc_port_serial, pki, port) == new_serial

        await stream.write(b"two")
        assert await asyncio.wait_for(stream.read(), TIMEOUT_S) == b"two"
        await stream.done_writing()
    async with grpc_channel(pki, port) as fresh:
        assert await who(fresh) == "-"


async def test_grpc_required_mode_maps_the_certificate_to_an_identity(
    pki: Path, grpc_server: Any, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    create_dev_certs(other)
    issue_client_cert(other, "mallory")
    (pki / "mallory.pem").write_bytes((other / "mallory.pem").read_bytes())
    (pki / "mallory-key.pem").write_bytes((other / "mallory-key.pem").read_bytes())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue_client_cert(pki, "expired", now=past, valid_days=1)
    port = await grpc_server(PublicTls(files(pki, "required")))

    async with grpc_channel(pki, port, "alice") as channel:
        assert await who(channel) == "cert:alice"
    for identity in (None, "expired", "mallory"):
        async with grpc_channel(pki, port, identity) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await who(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, identity


async def test_grpc_optional_mode_requests_no_certificate(pki: Path, grpc_server: Any) -> None:
    # grpcio offers "request and require" or "do not request": optional requests none,
    # so even a valid certificate is not sent and the call carries no identity.
    port = await grpc_server(PublicTls(files(pki, "optional")))
    for identity in (None, "alice"):
        async with grpc_channel(pki, port, identity) as channel:
            assert await who(channel) == "-"
