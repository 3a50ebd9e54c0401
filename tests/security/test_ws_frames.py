"""Invalid WebSocket frames on an authenticated socket (RFC 6455 sections 5 and 7.4).

websockets' sans-I/O ``ClientProtocol`` makes the handshake and reads what the gateway sends;
the frames themselves are written by hand. Each one carries an otherwise valid message, and
each is a protocol violation: the gateway closes with the code RFC 6455 names (1002 protocol
error, 1007 invalid payload data; 1009 for a length no frame may have) and the back-end
receives nothing.
"""

from __future__ import annotations

import json
import struct

import pytest

from tests.security.clients import RawWebSocket, frame
from tests.security.conftest import Recorder
from tests.support.stack import Stack

MESSAGE = json.dumps({"id": "framed", "content": {"type": "text", "text": "framed"}}).encode()
BAD_UTF8 = b'{"id": "framed", "content": {"type": "text", "text": "\xff\xfe"}}'
FIN, RSV1, RSV2, RSV3 = 0x80, 0x40, 0x20, 0x10
CONT, TEXT, CLOSE, PING = 0x0, 0x1, 0x8, 0x9

FRAMES: dict[str, tuple[bytes, int]] = {
    "invalid UTF-8 in a text frame": (frame(FIN | TEXT, BAD_UTF8), 1007),
    "invalid UTF-8 across fragments": (
        frame(TEXT, MESSAGE[:40] + b"\xe2\x82") + frame(FIN | CONT, b"\xff" + MESSAGE[40:]),
        1007,
    ),
    "unmasked client frame": (frame(FIN | TEXT, MESSAGE, mask=False), 1002),
    "reserved data opcode 0x3": (frame(FIN | 0x3, MESSAGE), 1002),
    "reserved control opcode 0xB": (frame(FIN | 0xB, MESSAGE), 1002),
    "ping over 125 bytes": (frame(FIN | PING, b"p" * 126), 1002),
    "fragmented ping": (frame(PING, b"p"), 1002),
    "continuation without a start": (frame(FIN | CONT, MESSAGE), 1002),
    "RSV1 without an extension": (frame(FIN | RSV1 | TEXT, MESSAGE), 1002),
    "RSV2": (frame(FIN | RSV2 | TEXT, MESSAGE), 1002),
    "RSV3": (frame(FIN | RSV3 | TEXT, MESSAGE), 1002),
    "new text frame inside a fragmented one": (
        frame(TEXT, MESSAGE[:10]) + frame(FIN | TEXT, MESSAGE),
        1002,
    ),
    "close code 999": (frame(FIN | CLOSE, struct.pack("!H", 999)), 1002),
    "close code 1005 on the wire": (frame(FIN | CLOSE, struct.pack("!H", 1005)), 1002),
    "close payload of one byte": (frame(FIN | CLOSE, b"\x03"), 1002),
    "close reason not UTF-8": (frame(FIN | CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
    # The most significant bit of a 64-bit length must be 0 (section 5.2); websockets
    # reads the length first and refuses it as too big.
    "64-bit length with the top bit set": (
        bytes([FIN | TEXT, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + b"mask",
        1009,
    ),
}


def open_socket(stack: Stack, user: str) -> RawWebSocket:
    ws = RawWebSocket(stack, {"Authorization": f"Bearer {stack.token(user)}"})
    assert ws.accepted, ws.proto.handshake_exc
    return ws


def test_control_a_valid_frame_is_delivered(guarded: Stack, attacker: Recorder) -> None:
    with open_socket(guarded, attacker.user) as ws:
        ws.send_raw(frame(FIN | TEXT, MESSAGE))
        replies = [json.loads(t) for t in ws.read_texts(2)]
    assert [r["content"]["type"] for r in replies] == ["ack", "text"]
    assert [m["id"] for m in attacker.messages()] == ["framed"]


@pytest.mark.parametrize(("data", "code"), FRAMES.values(), ids=FRAMES.keys())
def test_invalid_frame_closes_the_socket(
    guarded: Stack, attacker: Recorder, data: bytes, code: int
) -> None:
    with open_socket(guarded, attacker.user) as ws:
        ws.send_raw(data)
        close = ws.read_until_close()
    assert close is not None, "the gateway sent no close frame"
    assert close.code == code
    assert ws.texts == []
    assert attacker.messages() == []
