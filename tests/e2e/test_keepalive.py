"""WebSocket keepalive: the gateway pings every WS_PING_INTERVAL_S and drops a peer that
does not answer within WS_PING_TIMEOUT_S, releasing its connection slot."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.config import GatewayConfig
from gateway.server import http_config
from tests.e2e.test_websocket import SUBPROTOCOL, recv_json, until_final, ws_connect
from tests.support.stack import Stack, running_stack

PING_INTERVAL_S = 2
PING_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def pinging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        Path(tmp_path_factory.mktemp("keepalive")),
        WS_PING_INTERVAL_S=str(PING_INTERVAL_S),
        WS_PING_TIMEOUT_S=str(PING_TIMEOUT_S),
        MAX_WS_CONN="1",
    ) as s:
        yield s


class SilentPeer:
    """A raw TLS socket that completes the WebSocket handshake, then never reads or
    writes again: no pong, not even a TLS close_notify, like a peer that vanished."""

    def __init__(self, stack: Stack, token: str):
        self.protocol = ClientProtocol(
            parse_uri(stack.ws_url), subprotocols=[Subprotocol(SUBPROTOCOL)]
        )
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {token}"
        self.protocol.send_request(request)
        raw = socket.create_connection(("localhost", stack.ports["http"]), timeout=10)
        self.sock = stack.ssl_context().wrap_socket(raw, server_hostname="localhost")
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.events: list[object] = []
        while not self.events:
            self._feed(self.sock.recv(65536))
        assert getattr(self.events[0], "status_code", None) == 101, self.events[0]

    def read_to_end(self) -> list[Frame]:
        """Everything the gateway sent since the handshake, once it closed the connection."""
        self.sock.settimeout(10)
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                break
            if not data:
                break
            self._feed(data)
        self.sock.close()
        return [event for event in self.events if isinstance(event, Frame)]

    def _feed(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self.events.extend(self.protocol.events_received())


async def refused(stack: Stack, token: str) -> bool:
    """True when a new socket of the user is refused for too many connections."""
    with pytest.raises(InvalidStatus) as refusal:
        async with ws_connect(stack, token):
            pass
    return refusal.value.response.status_code == 429


async def connect_when_free(stack: Stack, token: str, timeout_s: float) -> ClientConnection:
    """A socket of the user, once a slot is free; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await ws_connect(stack, token)  # type: ignore[no-any-return]
        except InvalidStatus as exc:
            assert exc.response.status_code == 429
        assert loop.time() < deadline, "timed out waiting for a free slot"
        await asyncio.sleep(0.2)


async def test_a_peer_that_stops_answering_pings_is_dropped_and_its_slot_released(
    pinging: Stack,
) -> None:
    token, other = pinging.token("silent"), pinging.token("lively")
    async with ws_connect(pinging, other) as lively:
        silent = await asyncio.to_thread(SilentPeer, pinging, token)
        # MAX_WS_CONN=1: while the silent peer holds its slot, the user cannot open another.
        assert await refused(pinging, token)
        # It gets a ping, does not answer, and is dropped: the slot is free again. The
        # deadline covers the ping interval and timeout, far below TLS's own 30 s wait.
        ws = await connect_when_free(pinging, token, PING_INTERVAL_S + PING_TIMEOUT_S + 8)
        async with ws:
            assert await ask(ws, "back") == "back"
        frames = await asyncio.to_thread(silent.read_to_end)
        assert Opcode.PING in [f.opcode for f in frames]
        closes = [f for f in frames if f.opcode is Opcode.CLOSE]
        assert not closes or closes[0].data[:2] == (1011).to_bytes(2, "big")
        # A client that answers pings (websockets does) lived through the same intervals.
        assert await ask(lively, "still here") == "still here"


async def ask(ws: ClientConnection, text: str) -> str:
    """The final reply to a message without an id (the gateway picks it: nothing is left
    to record once the reply is in, so the socket can close at once)."""
    await ws.send(json.dumps({"content": {"type": "text", "text": text}}))
    ack = await recv_json(ws)
    assert ack["content"]["type"] == "ack"
    frames = await until_final(ws, ack["id"])
    return str(frames[-1]["content"]["text"])


@pytest.mark.parametrize(
    ("interval_s", "timeout_s", "expected"),
    [(20, 20, (20.0, 20.0)), (5, 0, (5.0, None)), (0, 7, (None, 7.0))],
)
def test_keepalive_settings_reach_the_websocket_server(
    interval_s: int, timeout_s: int, expected: tuple[float | None, float | None]
) -> None:
    config = GatewayConfig(ws_ping_interval_s=interval_s, ws_ping_timeout_s=timeout_s)
    server = http_config(config, object(), None, port=0)
    assert (server.ws_ping_interval, server.ws_ping_timeout) == expected


@pytest.mark.parametrize("compression", [False, True])
def test_the_compression_setting_reaches_the_websocket_server(compression: bool) -> None:
    server = http_config(GatewayConfig(ws_compression=compression), object(), None, port=0)
    assert server.ws_per_message_deflate is compression
