"""Limits on every surface: rate, connections and size, with small configured values."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.stack import AUDIENCE, ISSUER, Stack, running_stack

MAX_BYTES = 2048
RATE_MAX = 3
MAX_WS = 2


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        Path(tmp_path_factory.mktemp("limited")),
        MAX_MESSAGE_BYTES=str(MAX_BYTES),
        RATE_LIMIT_MAX=str(RATE_MAX),
        RATE_LIMIT_WINDOW_MS="600000",
        MAX_WS_CONN=str(MAX_WS),
        BODY_TIMEOUT_MS="500",
    ) as s:
        yield s


def post(stack: Stack, token: str, body: bytes | dict[str, object]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(verify=stack.ssl_context(), timeout=30) as c:
        return c.post(f"{stack.base_url}/messages", content=content, headers=headers)


PING = {"role": "user", "content": {"type": "text", "text": "Ping"}}


def test_http_rate_limit_gives_429_with_retry_after(limited: Stack) -> None:
    token = limited.token()
    codes = [post(limited, token, PING).status_code for _ in range(RATE_MAX)]
    assert codes == [200] * RATE_MAX
    r = post(limited, token, PING)
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limited"
    # Another user has a window of their own.
    assert post(limited, limited.token(), PING).status_code == 200


async def test_rate_limit_spans_surfaces(limited: Stack) -> None:
    token = limited.token()
    for _ in range(RATE_MAX):
        assert post(limited, token, PING).status_code == 200
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(limited.ws_url, ssl=limited.ssl_context(), additional_headers=headers) as ws:
        await ws.send(json.dumps(PING))
        frame = json.loads(await ws.recv())
    assert frame["content"]["type"] == "error"
    assert frame["content"]["data"]["code"] == "rate_limited"
    creds = grpc.ssl_channel_credentials(limited.ca_file.read_bytes())
    async with grpc.aio.secure_channel(limited.grpc_target, creds) as ch:
        msg = message_pb2.Message(content=message_pb2.Content(type="text", text="x"))
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg), metadata=(("authorization", f"Bearer {token}"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_http_body_too_large_is_413(limited: Stack) -> None:
    body = {"role": "user", "content": {"type": "text", "text": "x" * (MAX_BYTES + 10)}}
    r = post(limited, limited.token(), body)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "message_too_large"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"role":"user","content":{"type":"text"},"bogus":1}', "bogus"),
        (b'{"role":"user","content":{"type":5}}', "type"),
        (b'{"role":"user"}', "content"),
        (b"[1, 2]", "object"),
    ],
)
def test_http_bad_input_is_400_with_json_error(limited: Stack, body: bytes, fragment: str) -> None:
    r = post(limited, limited.token(), body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_argument"
    assert fragment in error["message"]
    assert "Traceback" not in r.text


def _unsigned(claims: dict[str, object]) -> str:
    def b64(data: dict[str, object]) -> str:
        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize(
    "kind", ["missing", "garbage", "expired", "wrong-secret", "basic", "alg-none", "alg-hs512"]
)
def test_http_bad_credentials_are_401(limited: Stack, kind: str) -> None:
    claims = {"sub": "eve", "exp": int(time.time()) + 600, "iss": ISSUER, "aud": AUDIENCE}
    forged = {
        "alg-none": _unsigned(claims),
        "alg-hs512": jwt.encode(claims, limited.secret, algorithm="HS512"),
    }
    if kind in forged:
        with httpx.Client(verify=limited.ssl_context(), timeout=30) as c:
            r = c.post(
                f"{limited.base_url}/messages",
                json=PING,
                headers={"Authorization": f"Bearer {forged[kind]}"},
            )
        assert r.status_code == 401
        return
    headers = {
        "missing": {},
        "garbage": {"Authorization": "Bearer abc.def.ghi"},
        "expired": {"Authorization": f"Bearer {limited.token(ttl_s=-120)}"},
        "wrong-secret": {"Authorization": f"Bearer {limited.token(secret='x' * 40)}"},
        "basic": {"Authorization": "Basic YWxpY2U6cHc="},
    }[kind]
    with httpx.Client(verify=limited.ssl_context(), timeout=30) as c:
        r = c.post(f"{limited.base_url}/messages", json=PING, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"


async def test_ws_frame_too_large_closes_1009(limited: Stack) -> None:
    headers = {"Authorization": f"Bearer {limited.token()}"}
    async with connect(
        limited.ws_url, ssl=limited.ssl_context(), additional_headers=headers, max_size=None
    ) as ws:
        await ws.send("x" * (MAX_BYTES + 100))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_ws_connections_per_user_are_capped_with_429(limited: Stack) -> None:
    token = limited.token()
    headers = {"Authorization": f"Bearer {token}"}
    open_sockets = [
        await connect(limited.ws_url, ssl=limited.ssl_context(), additional_headers=headers)
        for _ in range(MAX_WS)
    ]
    try:
        with pytest.raises(InvalidStatus) as info:
            await connect(limited.ws_url, ssl=limited.ssl_context(), additional_headers=headers)
        assert info.value.response.status_code == 429
    finally:
        for ws in open_sockets:
            await ws.close()
    # Closing frees the slots.
    async with connect(limited.ws_url, ssl=limited.ssl_context(), additional_headers=headers):
        pass


async def test_grpc_message_too_large_is_resource_exhausted(limited: Stack) -> None:
    creds = grpc.ssl_channel_credentials(limited.ca_file.read_bytes())
    async with grpc.aio.secure_channel(limited.grpc_target, creds) as ch:
        msg = message_pb2.Message(
            content=message_pb2.Content(type="text", text="y" * (MAX_BYTES * 2))
        )
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg),
            metadata=(("authorization", f"Bearer {limited.token()}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_slow_body_gets_408(limited: Stack) -> None:
    """A client that announces a body and never sends it is cut off, not waited for."""
    raw = socket.create_connection(("127.0.0.1", limited.ports["http"]), timeout=10)
    with limited.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(
            b"POST /messages HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: Bearer {limited.token()}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = b""
        while b'"}}' not in answer and (chunk := tls.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"request_timeout"' in answer
