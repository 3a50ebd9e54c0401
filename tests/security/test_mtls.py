"""Mutual TLS at both edges of the gateway.

Public ports with ``CLIENT_CERT_MODE=required``: a handshake without a certificate, or with
one from another CA (with the very same CA name), expired, not yet valid, or issued for
servers only (extended key usage ``serverAuth``, RFC 5280 section 4.2.1.12), fails on the HTTPS
port and on the gRPC port; a valid client certificate works.

Gateway to back-end: the back-end requires a client certificate from the mesh CA. A gateway
whose chat client certificate comes from another CA, or that expects another name on the
chat server's certificate, answers 503 / UNAVAILABLE and the back-end receives nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.certs import create_dev_certs, issue_cert, issue_client_cert
from tests.security.clients import (
    TIMEOUT_S,
    bearer,
    grpc_send,
    post_message,
    recorded,
    text_message,
)
from tests.support.stack import Stack, free_port, wait_until

REFUSED = ["none", "other-ca", "expired", "not-yet-valid", "server-only"]


@pytest.fixture(scope="module")
def required(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = Path(tmp_path_factory.mktemp("mtls-required"))
    s = Stack.create(workdir / "stack")
    certs = s.workdir / "certs"
    issue_client_cert(certs, "alice")
    now = dt.datetime.now(dt.UTC)
    issue_client_cert(certs, "expired", now=now - dt.timedelta(days=30), valid_days=1)
    issue_client_cert(certs, "not-yet-valid", now=now + dt.timedelta(days=2), valid_days=30)
    issue_cert(certs, "server-only", "server-only", server=True, client=False)
    other = workdir / "other-ca"
    create_dev_certs(other)  # another CA with the same name as the gateway's
    issue_client_cert(other, "other-ca")
    for name in ("other-ca.pem", "other-ca-key.pem"):
        shutil.copy(other / name, certs / name)
    s.client_cert = "alice"  # for the start-up health checks
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway(CLIENT_CA_FILE="certs/ca.pem", CLIENT_CERT_MODE="required")
        yield s
    finally:
        s.stop()


def https_status(stack: Stack, identity: str) -> int | None:
    """``GET /health`` over a new TLS connection; None when the handshake is refused.

    With TLS 1.3 the client finishes its side before the server has checked the client's
    certificate, so a refusal may show only when the response is read.
    """
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    if identity != "none":
        certs = stack.workdir / "certs"
        context.load_cert_chain(certs / f"{identity}.pem", certs / f"{identity}-key.pem")
    try:
        with (
            socket.create_connection(("127.0.0.1", stack.ports["http"]), timeout=TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            head = tls.recv(64)
    except (ssl.SSLError, ConnectionError):
        return None
    return int(head.split()[1]) if head else None


async def grpc_health(stack: Stack, identity: str) -> grpc.StatusCode:
    certs = stack.workdir / "certs"
    credentials = grpc.ssl_channel_credentials(
        stack.ca_file.read_bytes(),
        (certs / f"{identity}-key.pem").read_bytes() if identity != "none" else None,
        (certs / f"{identity}.pem").read_bytes() if identity != "none" else None,
    )
    async with grpc.aio.secure_channel(stack.grpc_target, credentials) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("identity", REFUSED)
def test_https_port_refuses_the_handshake(required: Stack, identity: str) -> None:
    assert https_status(required, identity) is None


@pytest.mark.parametrize("identity", REFUSED)
async def test_grpc_port_refuses_the_handshake(required: Stack, identity: str) -> None:
    assert await grpc_health(required, identity) == grpc.StatusCode.UNAVAILABLE


async def test_a_valid_client_certificate_works_on_both_ports(required: Stack) -> None:
    assert https_status(required, "alice") == 200
    assert await grpc_health(required, "alice") == grpc.StatusCode.OK


# --- the gateway's own client certificate towards the back-ends ----------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The recording back-end (mesh CA required), tasks, and a correctly configured gateway."""
    workdir = Path(tmp_path_factory.mktemp("mesh"))
    s = Stack.create(workdir / "stack")
    other = workdir / "other-ca"
    create_dev_certs(other)
    for name in ("gateway-client.pem", "gateway-client-key.pem"):
        shutil.copy(other / name, s.workdir / "certs" / f"other-{name}")
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway()
        yield s
    finally:
        s.stop()


def misconfigured_gateway(mesh: Stack, name: str, **env: str) -> Stack:
    """Another gateway process in front of the same back-ends, with its own message store
    (what it queues is its own to deliver); the caller stops it."""
    gateway = dataclasses.replace(
        mesh, ports={**mesh.ports, "http": free_port(), "grpc": free_port()}, processes=[]
    )
    proc = gateway.start(
        name, "serve", BACKEND_CHAT_TIMEOUT_MS="5000", DATA_DIR=f"data-{name}", **env
    )
    wait_until(
        lambda: gateway.health_status() is not None or proc.popen.poll() is not None,
        30,
        f"{name} listening",
    )
    assert proc.popen.poll() is None, proc.log()
    return gateway


MISCONFIGURED = {
    "client certificate from another CA": {
        "BACKEND_CHAT_CERT_FILE": "certs/other-gateway-client.pem",
        "BACKEND_CHAT_KEY_FILE": "certs/other-gateway-client-key.pem",
    },
    "server name of another back-end": {"BACKEND_CHAT_SERVER_NAME": "tasks"},
    "server name on no certificate": {"BACKEND_CHAT_SERVER_NAME": "chat.elsewhere.example"},
}


def test_control_the_correct_gateway_reaches_the_backend(mesh: Stack) -> None:
    r = post_message(mesh, text_message("control"), token=mesh.token("mesh-control"))
    assert r.status_code == 200, r.text
    assert [m["text"] for m in recorded(mesh, "mesh-control")] == ["control"]


@pytest.mark.parametrize("case", MISCONFIGURED)
async def test_a_failed_backend_handshake_is_queued_and_delivers_nothing(
    mesh: Stack, case: str
) -> None:
    slug = case.replace(" ", "-")
    user = f"mesh-{slug}"
    gateway = misconfigured_gateway(mesh, f"gateway-{slug}", **MISCONFIGURED[case])
    try:
        assert gateway.health_status() == 503
        # The back-end cannot be reached: the message waits in the durable queue (its
        # redelivery fails the same handshake), and nothing reaches the back-end.
        r = post_message(gateway, text_message("never delivered"), token=gateway.token(user))
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        result = await grpc_send(gateway, bearer(gateway.token(user)))
        assert result.code == grpc.StatusCode.OK
        assert recorded(mesh, user) == []
    finally:
        gateway.stop()
