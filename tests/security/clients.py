"""Small black-box clients for the security tests: raw TLS bytes, HTTP, gRPC, WebSocket.

Every call has a deadline and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.recorder import received
from tests.support.stack import Stack

TIMEOUT_S = 10.0
INVALID_HTTP = b"HTTP/1.1 400 Bad Request\r\n"  # uvicorn's answer to what httptools refuses


def recorded(stack: Stack, user: str) -> list[dict[str, str]]:
    """What the recording back-end of ``stack`` received for ``user``."""
    return [m for m in received(stack.recorder_file) if m["user"] == user]


def raw_tls(stack: Stack, data: bytes, *, read_s: float = 5, one_response: bool = False) -> bytes:
    """Send raw bytes to the HTTPS port; everything answered until close or ``read_s`` idle.

    With ``one_response``, stop after the first response (its head and ``Content-Length``
    body), so that a kept-alive or upgraded connection does not wait for ``read_s``.
    """
    sock = socket.create_connection(("127.0.0.1", stack.ports["http"]), timeout=read_s)
    with stack.ssl_context().wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(data)
        answer = b""
        try:
            while not (one_response and _complete(answer)) and (chunk := tls.recv(65536)):
                answer += chunk
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
    return answer


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer (0 when there was none)."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and answer.startswith(b"HTTP/1.1 ") else 0


def text_message(text: str, **fields: Any) -> dict[str, Any]:
    return {"content": {"type": "text", "text": text}, **fields}


def post_message(
    stack: Stack,
    body: dict[str, Any] | str,
    *,
    token: str | None = None,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
) -> httpx.Response:
    """``POST /messages`` with ``Authorization: Bearer <token>`` (when given) and ``headers``."""
    all_headers: list[tuple[str, str]] = []
    if token is not None:
        all_headers.append(("Authorization", f"Bearer {token}"))
    if isinstance(headers, dict):
        all_headers.extend(headers.items())
    elif headers:
        all_headers.extend(headers)
    content = body if isinstance(body, str) else None
    with httpx.Client(verify=stack.ssl_context(), timeout=TIMEOUT_S) as client:
        return client.post(
            f"{stack.base_url}/messages",
            json=None if content is not None else body,
            content=content,
            headers=all_headers,
        )


@dataclass
class GrpcResult:
    code: grpc.StatusCode
    details: str = ""
    replies: list[message_pb2.Message] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)


def grpc_credentials(stack: Stack) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(stack.ca_file.read_bytes())


async def grpc_send(
    stack: Stack,
    metadata: tuple[tuple[str, str], ...],
    message: message_pb2.Message | None = None,
) -> GrpcResult:
    """One ``Gateway.Send``: its final status and every reply."""
    if message is None:
        message = message_pb2.Message()
        message.content.type = "text"
        message.content.text = "hello over grpc"
    async with grpc.aio.secure_channel(stack.grpc_target, grpc_credentials(stack)) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Send(
            gateway_pb2.SendRequest(message=message), metadata=metadata, timeout=TIMEOUT_S
        )
        replies: list[message_pb2.Message] = []
        try:
            async for response in call:
                replies.append(response.message)
        except grpc.aio.AioRpcError as exc:
            trailers = {str(item[0]): str(item[1]) for item in exc.trailing_metadata() or ()}
            return GrpcResult(exc.code(), exc.details() or "", replies, trailers)
    return GrpcResult(grpc.StatusCode.OK, "", replies)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def frame(first_byte: int, payload: bytes, *, mask: bool = True) -> bytes:
    """One raw WebSocket frame (RFC 6455 section 5.2): ``first_byte`` is FIN, RSV and opcode."""
    length = len(payload)
    flag = 0x80 if mask else 0
    if length < 126:
        head = bytes([first_byte, flag | length])
    elif length < 65536:
        head = bytes([first_byte, flag | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first_byte, flag | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A WebSocket over a blocking TLS socket: websockets' sans-I/O ``ClientProtocol`` does
    the handshake and parses what the server sends; the test writes any bytes it likes."""

    def __init__(self, stack: Stack, headers: dict[str, str], *, path: str = "/ws"):
        self.proto = ClientProtocol(parse_uri(stack.ws_url.removesuffix("/ws") + path))
        request = self.proto.connect()
        for name, value in headers.items():
            request.headers[name] = value
        self.proto.send_request(request)
        raw = socket.create_connection(("127.0.0.1", stack.ports["http"]), timeout=TIMEOUT_S)
        self.tls = stack.ssl_context().wrap_socket(raw, server_hostname="localhost")
        self.tls.sendall(b"".join(self.proto.data_to_send()))
        while self.proto.state is State.CONNECTING:
            data = self.tls.recv(65536)
            if not data:
                self.proto.receive_eof()
                break
            self.proto.receive_data(data)
        self.texts: list[str] = []

    @property
    def accepted(self) -> bool:
        return self.proto.handshake_exc is None and self.proto.state is State.OPEN

    def send_raw(self, data: bytes) -> None:
        self.tls.sendall(data)

    def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self.tls.sendall(b"".join(self.proto.data_to_send()))

    def read_until_close(self) -> Close | None:
        """Read (keeping text frames in ``texts``) until the server's close frame or EOF."""
        try:
            while self.proto.close_rcvd is None and (data := self.tls.recv(65536)):
                self.proto.receive_data(data)
                self._collect()
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
        return self.proto.close_rcvd

    def read_texts(self, count: int) -> list[str]:
        """Read until ``count`` text frames have arrived in total (or the socket ends)."""
        try:
            while len(self.texts) < count and (data := self.tls.recv(65536)):
                self.proto.receive_data(data)
                self._collect()
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
        return self.texts

    def _collect(self) -> None:
        for event in self.proto.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.texts.append(bytes(event.data).decode())

    def close(self) -> None:
        self.tls.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
