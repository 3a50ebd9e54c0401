"""The TLS posture of both public ports of a real gateway process, and certificate rotation
with SIGHUP while a WebSocket and a gRPC stream stay open.

Posture: TLS 1.2 and 1.3 only, AEAD suites only. Each refusal has a control: the same client
context completes a handshake with a permissive in-memory server, so a refusal comes from the
gateway and not from the client's own settings.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from websockets.asyncio.client import ClientConnection, connect

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from gateway.certs import GATEWAY_HOSTS, issue_cert
from tests.support.stack import Stack, wait_until

AEAD_TLS13 = {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"}
CBC_ONLY = "ECDHE+AES+SHA1:ECDHE+AES+SHA256:ECDHE+AES+SHA384:!AESGCM:!CHACHA20:@SECLEVEL=0"
TIMEOUT_S = 10.0
PORTS = ("http", "grpc")


def client_context(stack: Stack, port: str) -> ssl.SSLContext:
    context = stack.ssl_context()
    context.set_alpn_protocols(["h2"] if port == "grpc" else ["http/1.1"])
    return context


def handshake(stack: Stack, port: str, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A completed TLS handshake with the gateway's ``port`` (the caller closes it)."""
    raw = socket.create_connection(("127.0.0.1", stack.ports[port]), timeout=TIMEOUT_S)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def negotiated(stack: Stack, port: str, context: ssl.SSLContext) -> tuple[str, str]:
    with handshake(stack, port, context) as tls:
        version, cipher = tls.version(), tls.cipher()
    assert version is not None and cipher is not None
    return version, cipher[0]


def presented_serial(stack: Stack, port: str) -> int:
    """The serial of the certificate a new handshake on ``port`` presents."""
    with handshake(stack, port, client_context(stack, port)) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def in_memory_handshake(
    client: ssl.SSLContext, server: ssl.SSLContext
) -> tuple[str | None, str | None]:
    """Run a handshake between two contexts through memory buffers; the version and cipher."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    pending = [c, s]
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            cipher = c.cipher()
            return c.version(), cipher[0] if cipher else None
    raise AssertionError("the in-memory handshake did not finish")


def permissive_server(stack: Stack, *, ciphers: str | None) -> ssl.SSLContext:
    certs = stack.workdir / "certs"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "gateway.pem", certs / "gateway-key.pem")
    if ciphers is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers(ciphers)
    return context


@pytest.mark.parametrize("port", PORTS)
def test_tls13_negotiates_an_aead_suite(stack: Stack, port: str) -> None:
    version, cipher = negotiated(stack, port, client_context(stack, port))
    assert version == "TLSv1.3" and cipher in AEAD_TLS13


@pytest.mark.parametrize("port", PORTS)
def test_tls12_negotiates_ecdhe_with_an_aead_suite(stack: Stack, port: str) -> None:
    context = client_context(stack, port)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ALL:@SECLEVEL=0")  # offer everything, CBC and RSA key exchange too
    version, cipher = negotiated(stack, port, context)
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("-GCM-" in cipher or "CHACHA20" in cipher), cipher


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("port", PORTS)
def test_tls11_is_refused(stack: Stack, port: str) -> None:
    context = client_context(stack, port)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    control = in_memory_handshake(context, permissive_server(stack, ciphers="ALL:@SECLEVEL=0"))
    assert control[0] == "TLSv1.1"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        negotiated(stack, port, context)


@pytest.mark.parametrize("port", PORTS)
def test_cbc_suites_are_refused(stack: Stack, port: str) -> None:
    context = client_context(stack, port)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CBC_ONLY)
    # Python's default server context would accept these suites: that is why the posture exists.
    version, cipher = in_memory_handshake(context, permissive_server(stack, ciphers=None))
    assert version == "TLSv1.2" and cipher is not None and "GCM" not in cipher
    with pytest.raises((ssl.SSLError, ConnectionError)):
        negotiated(stack, port, context)


# --- rotation ---------------------------------------------------------------------------------


@pytest.fixture
def rotating_stack(tmp_path: Path) -> Iterator[Stack]:
    """A gateway of its own: the test replaces its certificate."""
    stack = Stack.create(tmp_path)
    try:
        stack.start_backends()
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()


def text(msg_id: str, body: str) -> message_pb2.Message:
    msg = message_pb2.Message(id=msg_id, role=message_pb2.ROLE_USER)
    msg.content.type = "text"
    msg.content.text = body
    return msg


async def ws_final(ws: ClientConnection, msg_id: str, body: str) -> str:
    """Send one message on the open WebSocket; the text of its final reply."""
    await ws.send(json.dumps({"id": msg_id, "content": {"type": "text", "text": body}}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        if frame["context"].get("reply_to") == msg_id and frame["content"]["type"] == "text":
            return str(frame["content"]["text"])


async def next_delivery(
    sub: grpc.aio.UnaryStreamCall[Any, Any], msg_id: str
) -> message_pb2.Message:
    """The next message on the Subscribe stream with id ``msg_id``."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            response = await sub.read()
            assert response is not grpc.aio.EOF, "the Subscribe stream ended"
            if response.message.id == msg_id:
                return response.message


async def signal_reload(stack: Stack, log_line: str) -> None:
    """SIGHUP the gateway and wait until it logs ``log_line`` one more time."""
    gateway = next(p for p in stack.processes if p.name == "gateway")
    seen = gateway.log().count(log_line)
    os.kill(gateway.popen.pid, signal.SIGHUP)
    await asyncio.to_thread(
        wait_until, lambda: gateway.log().count(log_line) > seen, TIMEOUT_S, log_line
    )
    assert gateway.popen.poll() is None, gateway.log()


async def test_sighup_rotates_the_certificate_on_both_ports_and_keeps_open_streams(
    rotating_stack: Stack,
) -> None:
    stack = rotating_stack
    certs = stack.workdir / "certs"
    old_serial = x509.load_pem_x509_certificate((certs / "gateway.pem").read_bytes()).serial_number
    token = stack.token("rotator")
    headers = {"Authorization": f"Bearer {token}"}
    metadata = (("authorization", f"Bearer {token}"),)
    credentials = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with (
        connect(stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers) as ws,
        grpc.aio.secure_channel(stack.grpc_target, credentials) as channel,
    ):
        stub = gateway_pb2_grpc.GatewayStub(channel)
        sub = stub.Subscribe(gateway_pb2.SubscribeRequest(), metadata=metadata)
        await asyncio.wait_for(sub.wait_for_connection(), TIMEOUT_S)
        assert await ws_final(ws, "before", "before rotation") == "before rotation"
        assert (await next_delivery(sub, "before")).content.text == "before rotation"
        for port in PORTS:
            assert await asyncio.to_thread(presented_serial, stack, port) == old_serial

        issued = issue_cert(certs, "gateway", "dialog-gateway-rotated", hosts=GATEWAY_HOSTS)
        new_serial = x509.load_pem_x509_certificate(issued.cert_pem).serial_number
        await signal_reload(stack, "reloaded TLS certificates")
        for port in PORTS:
            assert await asyncio.to_thread(presented_serial, stack, port) == new_serial, port

        # The connections opened before the rotation still carry traffic both ways.
        assert await ws_final(ws, "after", "after rotation") == "after rotation"
        assert (await next_delivery(sub, "after")).content.text == "after rotation"
        sent = stub.Send(
            gateway_pb2.SendRequest(message=text("same", "same conn")), metadata=metadata
        )
        assert [r.message.content.text async for r in sent][-1] == "same conn"

        # An unusable key is refused: the rotated certificate stays in service.
        (certs / "gateway-key.pem").write_bytes((certs / "chat-key.pem").read_bytes())
        await signal_reload(stack, "TLS reload failed, keeping the current certificates")
        for port in PORTS:
            assert await asyncio.to_thread(presented_serial, stack, port) == new_serial, port
        assert await ws_final(ws, "still", "still here") == "still here"
        sub.cancel()
    gateway_log = next(p for p in stack.processes if p.name == "gateway").log()
    assert "PRIVATE KEY" not in gateway_log
