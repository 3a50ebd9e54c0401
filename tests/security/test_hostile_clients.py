"""Hostile and broken clients get a clear refusal, and the back-end gets nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.security.conftest import Recorder
from tests.support.stack import Stack, wait_until


def raw_request(stack: Stack, head: bytes, *, read_s: float = 5) -> bytes:
    """Send raw bytes over TLS and return everything the server answers."""
    sock = socket.create_connection(("127.0.0.1", stack.ports["http"]), timeout=read_s)
    with stack.ssl_context().wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(head)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
    return answer


async def test_frame_rate_gives_error_frames_then_close_1008(
    guarded: Stack, attacker: Recorder
) -> None:
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}"}
    codes = []
    async with connect(guarded.ws_url, ssl=guarded.ssl_context(), additional_headers=headers) as ws:
        for i in range(20):
            await ws.send(json.dumps({"id": f"f{i}", "content": {"type": "ping"}}))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["content"]["type"] == "error":
                    codes.append(frame["content"]["data"]["code"])
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert codes[:2] == ["rate_limited", "rate_limited"]
    assert len(attacker.messages()) <= 5


def slow_consumer_closes(stack: Stack) -> float:
    """How many slow consumers the gateway has closed, from its metrics."""
    with httpx.Client(verify=stack.ssl_context(), timeout=10) as c:
        text = c.get(f"{stack.base_url}/metrics").text
    prefix = 'dialog_gateway_rate_limited_total{limit="slow_consumer",surface="ws"}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_slow_consumer_is_closed_1013_and_can_resume(guarded: Stack, attacker: Recorder) -> None:
    token = guarded.token(attacker.user)
    before = slow_consumer_closes(guarded)
    # A blocking client with a tiny receive buffer that stops reading after one request:
    # websockets' sans-I/O protocol builds the handshake and frames.
    proto = ClientProtocol(parse_uri(guarded.ws_url))
    request = proto.connect()
    request.headers["Authorization"] = f"Bearer {token}"
    proto.send_request(request)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", guarded.ports["http"]))
    with guarded.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls:
        tls.settimeout(10)
        tls.sendall(b"".join(proto.data_to_send()))
        while proto.state is State.CONNECTING:
            proto.receive_data(tls.recv(65536))
        assert proto.handshake_exc is None
        flood = {"id": "flood", "content": {"type": "text", "text": "flood 2000 8000"}}
        proto.send_text(json.dumps(flood).encode())
        tls.sendall(b"".join(proto.data_to_send()))
        wait_until(lambda: slow_consumer_closes(guarded) > before, 30, "the slow-consumer close")
        # Drain: the frames queued before the close, then the close frame.
        while proto.close_rcvd is None and (data := tls.recv(65536)):
            proto.receive_data(data)
            proto.events_received()
    assert proto.close_rcvd is not None and proto.close_rcvd.code == 1013
    # What the socket missed is in the user's event stream, in order.
    ids: list[int] = []
    with (
        httpx.Client(verify=guarded.ssl_context(), timeout=30) as c,
        c.stream(
            "GET",
            f"{guarded.base_url}/events/stream",
            headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "1"},
        ) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if len(ids) == 50:
                    break
    assert ids == list(range(2, 52))


async def test_compression_bomb_closes_1009(guarded: Stack, attacker: Recorder) -> None:
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}"}
    bomb = json.dumps({"content": {"type": "text", "text": "a" * (2 * 1024 * 1024)}})
    async with connect(
        guarded.ws_url, ssl=guarded.ssl_context(), additional_headers=headers, max_size=None
    ) as ws:
        assert ws.protocol.extensions, "permessage-deflate was negotiated"
        await ws.send(bomb)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert attacker.messages() == []


@pytest.mark.parametrize("depth", [9, 40, 5000])
def test_deep_json_is_refused(guarded: Stack, attacker: Recorder, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = '{"content":{"type":"text","data":{"x":' + nested + "}}}"
    with httpx.Client(verify=guarded.ssl_context(), timeout=10) as c:
        r = c.post(
            f"{guarded.base_url}/messages",
            content=body,
            headers={"Authorization": f"Bearer {guarded.token(attacker.user)}"},
        )
    assert r.status_code == 400
    assert "nested deeper" in r.json()["error"]["message"]
    assert attacker.messages() == []


@pytest.mark.parametrize("number", ["1e400", "-1e999"])
def test_out_of_range_numbers_are_refused(guarded: Stack, attacker: Recorder, number: str) -> None:
    body = '{"content":{"type":"text","data":{"x":' + number + "}}}"
    with httpx.Client(verify=guarded.ssl_context(), timeout=10) as c:
        r = c.post(
            f"{guarded.base_url}/messages",
            content=body,
            headers={"Authorization": f"Bearer {guarded.token(attacker.user)}"},
        )
    assert r.status_code == 400
    assert attacker.messages() == []


def test_oversized_request_head_is_431(guarded: Stack, attacker: Recorder) -> None:
    head = (
        b"POST /messages HTTP/1.1\r\nHost: localhost\r\n"
        + f"Authorization: Bearer {guarded.token(attacker.user)}\r\n".encode()
        + b"X-Padding: "
        + b"p" * 8000
        + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    answer = raw_request(guarded, head)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert b'"request_header_too_large"' in answer
    assert attacker.messages() == []


@pytest.mark.parametrize("path", [b"/messages", b"/ws"])
def test_slowloris_head_is_cut_off_with_408(guarded: Stack, path: bytes) -> None:
    # Part of a request line and one header, then silence.
    answer = raw_request(guarded, b"GET " + path + b" HTTP/1.1\r\nHost: local", read_s=5)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_slowloris_body_is_cut_off_with_408(guarded: Stack, attacker: Recorder) -> None:
    head = (
        b"POST /messages HTTP/1.1\r\nHost: localhost\r\n"
        + f"Authorization: Bearer {guarded.token(attacker.user)}\r\n".encode()
        + b"Content-Length: 500\r\n\r\n{"
    )
    answer = raw_request(guarded, head)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert attacker.messages() == []


async def test_first_frame_auth_times_out_with_4408(guarded: Stack) -> None:
    async with connect(guarded.ws_url, ssl=guarded.ssl_context()) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4408
