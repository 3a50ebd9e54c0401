"""Public surfaces: security headers, the metrics listener and token, overload shedding."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect

from dialog.v1 import gateway_pb2, gateway_pb2_grpc
from tests.support.stack import Stack, free_port

METRICS_TOKEN = "metrics-secret-for-tests"


def test_security_headers_on_every_response(guarded: Stack) -> None:
    with httpx.Client(verify=guarded.ssl_context(), timeout=10) as c:
        for r in (
            c.get(f"{guarded.base_url}/health"),
            c.get(f"{guarded.base_url}/nope"),
            c.post(f"{guarded.base_url}/messages", json={}),
        ):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["strict-transport-security"].startswith("max-age=")
            assert "default-src 'none'" in r.headers["content-security-policy"]


@pytest.fixture(scope="module")
def shedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """At most two messages in flight; /metrics on an admin port, behind a token."""
    s = Stack.create(Path(tmp_path_factory.mktemp("shedding")))
    s.ports["admin"] = free_port()
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway(
            MAX_INFLIGHT="2", ADMIN_PORT=str(s.ports["admin"]), METRICS_TOKEN=METRICS_TOKEN
        )
        yield s
    finally:
        s.stop()


def test_metrics_move_to_the_admin_port_behind_the_token(shedding: Stack) -> None:
    admin = f"http://127.0.0.1:{shedding.ports['admin']}"
    with httpx.Client(verify=shedding.ssl_context(), timeout=10) as c:
        assert c.get(f"{shedding.base_url}/metrics").status_code == 404
        assert c.get(f"{admin}/metrics").status_code == 401
        assert (
            c.get(f"{admin}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        ok = c.get(f"{admin}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert ok.status_code == 200 and "dialog_gateway_messages_total" in ok.text
        assert c.get(f"{admin}/health").status_code == 200


async def test_overload_sheds_new_work_and_keeps_existing_streams(shedding: Stack) -> None:
    token = shedding.token()
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(
        shedding.ws_url, ssl=shedding.ssl_context(), additional_headers=headers
    ) as ws:
        for i in range(2):
            await ws.send(json.dumps({"id": f"s{i}", "content": {"type": "text", "text": "stall"}}))
        acks = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        assert [a["content"]["type"] for a in acks] == ["ack", "ack"]
        await ws.send(json.dumps({"id": "third", "content": {"type": "text", "text": "hi"}}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["content"]["data"]["code"] == "server_busy"
        async with httpx.AsyncClient(verify=shedding.ssl_context(), timeout=10) as c:
            r = await c.post(
                f"{shedding.base_url}/messages",
                json={"content": {"type": "text", "text": "hi"}},
                headers=headers,
            )
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        creds = grpc.ssl_channel_credentials(shedding.ca_file.read_bytes())
        async with grpc.aio.secure_channel(shedding.grpc_target, creds) as ch:
            req = gateway_pb2.SendRequest()
            req.message.content.type = "text"
            call = gateway_pb2_grpc.GatewayStub(ch).Send(
                req, metadata=(("authorization", f"Bearer {token}"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The existing socket still works for frames that need no new work.
        await ws.send("{not json")
        assert json.loads(await ws.recv())["content"]["data"]["code"] == "invalid_argument"
    # Closing the socket cancels its stalled calls; new work is accepted again.
    async with httpx.AsyncClient(verify=shedding.ssl_context(), timeout=10) as c:
        for _ in range(100):
            r = await c.post(
                f"{shedding.base_url}/messages",
                json={"content": {"type": "text", "text": "back"}},
                headers=headers,
            )
            if r.status_code == 200:
                break
            await asyncio.sleep(0.05)
    assert r.status_code == 200
