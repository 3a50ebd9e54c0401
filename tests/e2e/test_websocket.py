"""The WebSocket bridge driven by a real ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.stack import Stack

SUBPROTOCOL = "dialog.v1.json"


def ws_connect(stack: Stack, token: str | None = None, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(
        stack.ws_url,
        ssl=stack.ssl_context(),
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        additional_headers=headers,
        open_timeout=10,
        **kwargs,
    )


async def recv_json(ws: ClientConnection, timeout_s: float = 10) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))  # type: ignore[no-any-return]


async def until_final(ws: ClientConnection, msg_id: str) -> list[dict[str, Any]]:
    """Frames for ``msg_id`` up to its final reply (ack included)."""
    frames = []
    while True:
        frame = await recv_json(ws)
        if frame["context"].get("reply_to") != msg_id:
            continue
        frames.append(frame)
        kind = frame["content"]["type"]
        if kind not in ("ack", "delta") and frame["role"] != "event":
            return frames


def text_message(msg_id: str, text: str, **context: str) -> str:
    return json.dumps(
        {
            "id": msg_id,
            "role": "user",
            "content": {"type": "text", "text": text},
            "context": context,
        }
    )


async def test_ack_then_deltas_then_final(stack: Stack) -> None:
    async with ws_connect(stack, stack.token()) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        await ws.send(text_message("m1", "hello streaming world"))
        frames = await until_final(ws, "m1")
    assert frames[0]["content"]["type"] == "ack"
    assert frames[0]["id"] == "m1" and int(frames[0]["seq"]) >= 1
    deltas = [f["content"]["text"] for f in frames if f["content"]["type"] == "delta"]
    assert "".join(deltas).split() == ["hello", "streaming", "world"]
    assert frames[-1]["content"] == {"type": "text", "text": "hello streaming world"}


async def test_compression_is_not_negotiated_by_default(stack: Stack) -> None:
    # The client offers permessage-deflate (websockets does by default); WS_COMPRESSION
    # is off, so the gateway accepts without it.
    async with ws_connect(stack, stack.token()) as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send(text_message("c1", "plain"))
        frames = await until_final(ws, "c1")
    assert frames[-1]["content"] == {"type": "text", "text": "plain"}


async def test_many_conversations_and_backends_on_one_socket(stack: Stack) -> None:
    async with ws_connect(stack, stack.token()) as ws:
        await ws.send(text_message("a", "alpha beta", conversation_id="c1"))
        await ws.send(
            json.dumps(
                {
                    "id": "t",
                    "content": {"type": "task.create", "text": "water plants"},
                    "context": {"service": "tasks", "conversation_id": "c2"},
                }
            )
        )
        await ws.send(text_message("b", "gamma", conversation_id="c3"))
        finals: dict[str, dict[str, Any]] = {}
        while len(finals) < 3:
            frame = await recv_json(ws)
            kind = frame["content"]["type"]
            if kind not in ("ack", "delta") and frame["role"] != "event":
                finals[frame["context"]["reply_to"]] = frame
    assert finals["a"]["content"]["text"] == "alpha beta"
    assert finals["a"]["context"]["conversation_id"] == "c1"
    assert finals["b"]["content"]["text"] == "gamma"
    assert finals["t"]["content"]["type"] == "task"
    assert finals["t"]["context"]["conversation_id"] == "c2"


async def test_bad_frames_get_error_frames_and_socket_stays_open(stack: Stack) -> None:
    async with ws_connect(stack, stack.token()) as ws:
        for bad in (
            "{not json",
            '{"content": {"type": "text"}, "bogus": 1}',
            '{"role": "user"}',
            '{"content": {"type": 7}}',
        ):
            await ws.send(bad)
            frame = await recv_json(ws)
            assert frame["content"]["type"] == "error"
            assert frame["content"]["data"]["code"] == "invalid_argument"
        await ws.send(b"\x00binary")
        frame = await recv_json(ws)
        assert frame["content"]["data"]["code"] == "invalid_argument"
        await ws.send(text_message("ok", "still open"))
        frames = await until_final(ws, "ok")
    assert frames[-1]["content"]["text"] == "still open"


async def test_no_route_is_an_error_frame(stack: Stack) -> None:
    async with ws_connect(stack, stack.token()) as ws:
        await ws.send(text_message("x", "hi", service="nowhere"))
        frame = await recv_json(ws)
    assert frame["content"]["type"] == "error"
    assert frame["content"]["data"]["code"] == "unimplemented"
    assert frame["context"]["reply_to"] == "x"


@pytest.mark.parametrize("token", [None, "not-a-jwt"])
async def test_handshake_without_valid_token_is_refused_with_401(
    stack: Stack, token: str | None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": "Basic x"}
    with pytest.raises(InvalidStatus) as info:
        async with connect(stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers):
            pass
    assert info.value.response.status_code == 401


async def test_token_in_url_is_refused_and_never_logged(stack: Stack) -> None:
    token = stack.token()
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{stack.ws_url}?token={token}", ssl=stack.ssl_context()):
            pass
    assert info.value.response.status_code == 400
    gateway = next(p for p in stack.processes if p.name == "gateway")
    log = gateway.log()
    assert "/ws?token=[redacted]" in log
    assert token not in log and token.split(".")[2] not in log


async def test_first_frame_auth_for_browsers(stack: Stack) -> None:
    async with ws_connect(stack) as ws:
        await ws.send(json.dumps({"content": {"type": "auth", "text": stack.token()}}))
        await ws.send(text_message("m", "browser hello"))
        frames = await until_final(ws, "m")
    assert frames[-1]["content"]["text"] == "browser hello"


async def test_first_frame_auth_with_bad_token_closes_4401(stack: Stack) -> None:
    async with ws_connect(stack) as ws:
        await ws.send(json.dumps({"content": {"type": "auth", "text": "garbage"}}))
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401


async def test_closing_the_socket_cancels_its_calls(stack: Stack) -> None:
    token = stack.token()
    async with ws_connect(stack, token) as ws:
        await ws.send(text_message("long", " ".join(["word"] * 200)))
        frame = await recv_json(ws)
        assert frame["content"]["type"] == "ack"
    # The gateway is still healthy and serves the next socket.
    async with ws_connect(stack, token) as ws:
        await ws.send(text_message("next", "after close"))
        frames = await until_final(ws, "next")
    assert frames[-1]["content"]["text"] == "after close"
