"""Rate and connection caps at their exact edges.

A separate gateway has ``RATE_LIMIT_MAX=3`` per ``RATE_LIMIT_WINDOW_MS=2000`` (a sliding
window shared by every surface), ``MAX_WS_CONN=2`` and a frame rate of 3 per second per
socket. The per-socket frame rate of the guarded stack (5 per minute) is checked at its edge
too. Where a window must pass, the test sleeps on purpose and says so.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.security.clients import (
    RawWebSocket,
    bearer,
    grpc_send,
    post_message,
    recorded,
    text_message,
)
from tests.security.conftest import Recorder
from tests.support.stack import Stack, wait_until

RATE_MAX = 3
WINDOW_S = 2.0
FRAME_MAX = 3
FRAME_WINDOW_S = 1.0


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.create(Path(tmp_path_factory.mktemp("caps")))
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway(
            RATE_LIMIT_MAX=str(RATE_MAX),
            RATE_LIMIT_WINDOW_MS=str(int(WINDOW_S * 1000)),
            MAX_WS_CONN="2",
            WS_MESSAGE_RATE_MAX=str(FRAME_MAX),
            WS_MESSAGE_RATE_WINDOW_MS=str(int(FRAME_WINDOW_S * 1000)),
            WS_RATE_VIOLATIONS_MAX="5",
        )
        yield s
    finally:
        s.stop()


def user_for(request: pytest.FixtureRequest) -> str:
    return f"caps-{request.node.name}"[:120]


# --- the per-user message rate ------------------------------------------------------------


def test_exactly_the_limit_is_accepted_then_429_with_retry_after(
    capped: Stack, request: pytest.FixtureRequest
) -> None:
    user = user_for(request)
    token = capped.token(user)
    codes = [
        post_message(capped, text_message(f"m{i}"), token=token).status_code
        for i in range(RATE_MAX)
    ]
    assert codes == [200] * RATE_MAX
    refused = post_message(capped, text_message("over"), token=token)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_S
    assert sorted(m["text"] for m in recorded(capped, user)) == ["m0", "m1", "m2"]


def test_the_window_slides_one_message_at_a_time(
    capped: Stack, request: pytest.FixtureRequest
) -> None:
    user = user_for(request)
    token = capped.token(user)
    assert post_message(capped, text_message("first"), token=token).status_code == 200
    time.sleep(WINDOW_S / 2)  # on purpose: the next two land half a window later
    for text in ("second", "third"):
        assert post_message(capped, text_message(text), token=token).status_code == 200
    refused = post_message(capped, text_message("refused"), token=token)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    # When "first" leaves the window, exactly one more fits: "second" and "third" are still in.
    wait_until(
        lambda: post_message(capped, text_message("fourth"), token=token).status_code == 200,
        WINDOW_S + 2,
        "the first message to leave the window",
    )
    assert post_message(capped, text_message("fifth"), token=token).status_code == 429
    assert sorted(m["text"] for m in recorded(capped, user)) == [
        "first",
        "fourth",
        "second",
        "third",
    ]


async def test_the_limit_is_shared_by_every_surface(
    capped: Stack, request: pytest.FixtureRequest
) -> None:
    user = user_for(request)
    token = capped.token(user)
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(capped.ws_url, ssl=capped.ssl_context(), additional_headers=headers) as ws:
        await ws.send(json.dumps({"id": "w1", **text_message("ws")}))
        assert [json.loads(await ws.recv())["content"]["type"] for _ in range(2)] == [
            "ack",
            "text",
        ]
        r = await asyncio.to_thread(post_message, capped, text_message("http"), token=token)
        assert r.status_code == 200
        assert (await grpc_send(capped, bearer(token))).code == grpc.StatusCode.OK
        # The window is full: every surface refuses the next one.
        over = await grpc_send(capped, bearer(token))
        assert over.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 1 <= int(over.trailers["retry-after"]) <= WINDOW_S
        await ws.send(json.dumps({"id": "w2", **text_message("ws over")}))
        # The socket also carries the user's event stream (the HTTP and gRPC messages
        # above): the refusal is the frame answering w2.
        async with asyncio.timeout(10):
            while (frame := json.loads(await ws.recv()))["context"].get("reply_to") != "w2":
                pass
        assert frame["content"]["data"]["code"] == "rate_limited"
        r = await asyncio.to_thread(post_message, capped, text_message("http over"), token=token)
        assert r.status_code == 429
    assert len(recorded(capped, user)) == RATE_MAX


# --- WebSocket connections per user ---------------------------------------------------------


async def handshake_status(stack: Stack, token: str) -> tuple[int, ClientConnection | None]:
    headers = {"Authorization": f"Bearer {token}"}
    try:
        ws = await connect(
            stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers, open_timeout=10
        )
    except InvalidStatus as exc:
        return exc.response.status_code, None
    return 101, ws


async def test_websocket_connections_per_user_at_the_edge(
    capped: Stack, request: pytest.FixtureRequest
) -> None:
    user = user_for(request)
    token = capped.token(user)
    sockets: list[ClientConnection] = []
    try:
        for _ in range(2):
            status, ws = await handshake_status(capped, token)
            assert status == 101
            assert ws is not None
            sockets.append(ws)
        assert (await handshake_status(capped, token))[0] == 429
        # Another user is not affected.
        status, other = await handshake_status(capped, capped.token(f"{user}-other"))
        assert status == 101 and other is not None
        await other.close()
        # First-frame authentication hits the same cap after the upgrade: close 1008.
        async with connect(capped.ws_url, ssl=capped.ssl_context()) as late:
            await late.send(json.dumps({"content": {"type": "auth", "text": token}}))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(late.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        # Closing one frees one place, and only one.
        await sockets.pop().close()
        deadline = time.monotonic() + 5
        while True:
            status, ws = await handshake_status(capped, token)
            if status == 101 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status == 101 and ws is not None
        sockets.append(ws)
        assert (await handshake_status(capped, token))[0] == 429
    finally:
        for ws in sockets:
            await ws.close()


# --- frames per socket ----------------------------------------------------------------------


def error_codes(texts: list[str]) -> list[str]:
    return [json.loads(t)["content"]["data"]["code"] for t in texts]


def test_frame_rate_window_edge_and_slide(capped: Stack, request: pytest.FixtureRequest) -> None:
    # Malformed frames cost no message quota, so only the frame rate is in play.
    headers = {"Authorization": f"Bearer {capped.token(user_for(request))}"}
    with RawWebSocket(capped, headers) as ws:
        for _ in range(FRAME_MAX + 1):
            ws.send_text("{not json")
        codes = error_codes(ws.read_texts(FRAME_MAX + 1))
        assert codes == ["invalid_argument"] * FRAME_MAX + ["rate_limited"]
        time.sleep(FRAME_WINDOW_S + 0.1)  # on purpose: let the frame window pass
        ws.send_text("{not json")
        assert error_codes(ws.read_texts(FRAME_MAX + 2))[-1] == "invalid_argument"


def test_guarded_frame_rate_delivers_exactly_five(guarded: Stack, attacker: Recorder) -> None:
    # The guarded stack allows 5 frames per 60 s per socket: the sixth is refused unsent.
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}"}
    with RawWebSocket(guarded, headers) as ws:
        for i in range(6):
            ws.send_text(json.dumps({"id": f"f{i}", **text_message(f"frame {i}")}))
        frames = [json.loads(t) for t in ws.read_texts(11)]
    errors = [f for f in frames if f["content"]["type"] == "error"]
    assert [e["content"]["data"]["code"] for e in errors] == ["rate_limited"]
    assert sorted(f["context"]["reply_to"] for f in frames if f["content"]["type"] == "ack") == [
        f"f{i}" for i in range(5)
    ]
    wait_until(lambda: len(attacker.messages()) >= 5, 10, "five frames at the back-end")
    assert sorted(m["id"] for m in attacker.messages()) == [f"f{i}" for i in range(5)]
