"""A stream ends when its token expires, and delivers nothing after that."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from dialog.v1 import gateway_pb2, gateway_pb2_grpc
from tests.security.conftest import Recorder
from tests.support.stack import Stack

TTL_S = 2


async def test_websocket_closes_4401_when_the_token_expires(
    guarded: Stack, attacker: Recorder
) -> None:
    token = guarded.token(attacker.user, ttl_s=TTL_S)
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(guarded.ws_url, ssl=guarded.ssl_context(), additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), TTL_S + 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        assert time.time() >= json.loads(_claims(token))["exp"]
    assert attacker.messages() == []


async def test_reauthentication_extends_the_socket(guarded: Stack, attacker: Recorder) -> None:
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user, ttl_s=TTL_S)}"}
    async with connect(guarded.ws_url, ssl=guarded.ssl_context(), additional_headers=headers) as ws:
        fresh = guarded.token(attacker.user, ttl_s=600)
        await ws.send(json.dumps({"id": "re", "content": {"type": "auth", "text": fresh}}))
        ack = json.loads(await ws.recv())
        assert ack["content"]["type"] == "ack" and ack["context"]["reply_to"] == "re"
        await asyncio.sleep(TTL_S + 0.5)  # past the first token's expiry, on purpose
        await ws.send(
            json.dumps({"id": "after", "content": {"type": "text", "text": "still here"}})
        )
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
    assert frames[1]["content"]["text"] == "still here"
    assert [m["id"] for m in attacker.messages()] == ["after"]


async def test_reauthentication_cannot_switch_user(guarded: Stack, attacker: Recorder) -> None:
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}"}
    async with connect(guarded.ws_url, ssl=guarded.ssl_context(), additional_headers=headers) as ws:
        other = guarded.token("someone-else")
        await ws.send(json.dumps({"id": "sw", "content": {"type": "auth", "text": other}}))
        frame = json.loads(await ws.recv())
    assert frame["content"]["data"]["code"] == "permission_denied"


def test_event_stream_ends_when_the_token_expires(guarded: Stack, attacker: Recorder) -> None:
    token = guarded.token(attacker.user, ttl_s=TTL_S)
    with (
        httpx.Client(verify=guarded.ssl_context(), timeout=TTL_S + 10) as c,
        c.stream(
            "GET", f"{guarded.base_url}/events/stream", headers={"Authorization": f"Bearer {token}"}
        ) as r,
    ):
        lines = list(r.iter_lines())
    assert 'data: {"role":"system","content":{"type":"error"' in "\n".join(lines)
    assert any('"code":"unauthenticated"' in line for line in lines)


async def test_grpc_subscribe_ends_unauthenticated(guarded: Stack, attacker: Recorder) -> None:
    token = guarded.token(attacker.user, ttl_s=TTL_S)
    creds = grpc.ssl_channel_credentials(guarded.ca_file.read_bytes())
    async with grpc.aio.secure_channel(guarded.grpc_target, creds) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Subscribe(
            gateway_pb2.SubscribeRequest(), metadata=(("authorization", f"Bearer {token}"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (info.value.details() or "")


async def test_grpc_send_that_outlives_its_token_ends_unauthenticated(
    guarded: Stack, attacker: Recorder
) -> None:
    token = guarded.token(attacker.user, ttl_s=TTL_S)
    creds = grpc.ssl_channel_credentials(guarded.ca_file.read_bytes())
    msg = gateway_pb2.SendRequest()
    msg.message.content.type = "text"
    msg.message.content.text = "stall"
    async with grpc.aio.secure_channel(guarded.grpc_target, creds) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            msg, metadata=(("authorization", f"Bearer {token}"),)
        )
        kinds = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for r in call:
                kinds.append(r.message.content.type)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert kinds == ["ack"]


def _claims(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
