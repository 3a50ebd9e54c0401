"""Client certificates on both public ports of a real gateway (CLIENT_CERT_MODE,
CLIENT_CA_FILE): required refuses a handshake without a valid certificate (none, another
CA's, an expired one) on HTTPS, WebSocket and gRPC; a valid certificate is an additional
factor, and the JWT is still required."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from gateway.certs import create_dev_certs, issue_client_cert
from tests.support.stack import Stack

TIMEOUT_S = 10.0
INVALID = ("expired", "mallory")  # an expired certificate; one from another CA


def make_stack(workdir: Path, mode: str) -> Iterator[Stack]:
    stack = Stack.create(workdir / "stack")
    certs = stack.workdir / "certs"
    issue_client_cert(certs, "alice")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue_client_cert(certs, "expired", now=past, valid_days=1)
    other = workdir / "other-ca"
    create_dev_certs(other)
    issue_client_cert(other, "mallory")
    for name in ("mallory.pem", "mallory-key.pem"):
        shutil.copy(other / name, certs / name)
    stack.client_cert = "alice"  # for the start-up health checks
    try:
        stack.start_backends()
        stack.start_gateway(CLIENT_CA_FILE="certs/ca.pem", CLIENT_CERT_MODE=mode)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def required(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(tmp_path_factory.mktemp("mtls-required"), "required")


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(tmp_path_factory.mktemp("mtls-optional"), "optional")


def context_for(stack: Stack, identity: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    if identity is not None:
        certs = stack.workdir / "certs"
        context.load_cert_chain(certs / f"{identity}.pem", certs / f"{identity}-key.pem")
    return context


def health_status(stack: Stack, identity: str | None) -> int | None:
    """The status of ``GET /health`` over a new TLS connection; None when it is refused.

    A TLS 1.3 client finishes its side of the handshake before the server has checked its
    certificate, so a refusal may show only when the first response is read.
    """
    try:
        with (
            socket.create_connection(("127.0.0.1", stack.ports["http"]), timeout=TIMEOUT_S) as raw,
            context_for(stack, identity).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            head = tls.recv(64)
    except (ssl.SSLError, ConnectionError):
        return None
    if not head:
        return None
    return int(head.split()[1])


def grpc_channel(stack: Stack, identity: str | None) -> grpc.aio.Channel:
    certs = stack.workdir / "certs"
    credentials = grpc.ssl_channel_credentials(
        stack.ca_file.read_bytes(),
        (certs / f"{identity}-key.pem").read_bytes() if identity else None,
        (certs / f"{identity}.pem").read_bytes() if identity else None,
    )
    return grpc.aio.secure_channel(stack.grpc_target, credentials)


async def grpc_health(stack: Stack, identity: str | None) -> grpc.StatusCode:
    async with grpc_channel(stack, identity) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def ws_ack(stack: Stack, identity: str | None, token: str) -> str:
    """The type of the first frame answering one message, over a new WebSocket."""
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(
        stack.ws_url,
        ssl=context_for(stack, identity),
        additional_headers=headers,
        open_timeout=TIMEOUT_S,
    ) as ws:
        await ws.send(json.dumps({"id": "w1", "content": {"type": "text", "text": "hi"}}))
        return str(json.loads(await ws.recv(decode=True))["content"]["type"])


async def grpc_send(stack: Stack, identity: str, token: str | None) -> grpc.StatusCode:
    msg = message_pb2.Message(id="g1", role=message_pb2.ROLE_USER)
    msg.content.type = "text"
    msg.content.text = "hi"
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc_channel(stack, identity) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Send(
            gateway_pb2.SendRequest(message=msg), metadata=metadata, timeout=TIMEOUT_S
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


# Refused handshakes in required mode, on both ports and for every kind of bad
# certificate, are cases of the attack suite (tests/security/test_mtls.py).


async def test_required_accepts_a_valid_certificate_and_still_needs_the_jwt(
    required: Stack,
) -> None:
    assert health_status(required, "alice") == 200
    async with httpx.AsyncClient(
        base_url=required.base_url, verify=context_for(required, "alice"), timeout=TIMEOUT_S
    ) as client:
        body = {"role": "user", "content": {"type": "text", "text": "hi"}}
        assert (await client.post("/messages", json=body)).status_code == 401
        token = {"Authorization": f"Bearer {required.token()}"}
        assert (await client.post("/messages", json=body, headers=token)).status_code == 200
    assert await grpc_health(required, "alice") == grpc.StatusCode.OK
    assert await ws_ack(required, "alice", required.token()) == "ack"
    assert await grpc_send(required, "alice", required.token()) == grpc.StatusCode.OK
    assert await grpc_send(required, "alice", None) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(InvalidStatus) as caught:
        await ws_ack(required, "alice", "not-a-token")
    assert caught.value.response.status_code == 401


async def test_optional_accepts_no_certificate_and_refuses_an_invalid_one_on_https(
    optional: Stack,
) -> None:
    assert health_status(optional, None) == 200
    assert health_status(optional, "alice") == 200
    assert await ws_ack(optional, None, optional.token()) == "ack"
    for identity in INVALID:
        assert health_status(optional, identity) is None, identity


async def test_optional_requests_no_certificate_on_grpc(optional: Stack) -> None:
    # grpcio can only request-and-require a client certificate or not request one; in
    # optional mode it requests none, so an invalid certificate is never sent or checked.
    for identity in (None, "alice", *INVALID):
        assert await grpc_health(optional, identity) == grpc.StatusCode.OK, identity
