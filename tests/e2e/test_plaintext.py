"""TLS=off: plain HTTP, WebSocket and gRPC, for running behind a TLS-terminating proxy."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect

from tests.support.stack import Stack


async def test_tls_off_serves_every_surface_in_plaintext(tmp_path: Path) -> None:
    s = Stack.create(tmp_path)
    s.tls = False
    try:
        s.start_backends()
        s.start_gateway(TLS="off")
        token = s.token()
        async with httpx.AsyncClient(base_url=s.base_url, timeout=30) as c:
            r = await c.post(
                "/messages",
                json={"role": "user", "content": {"type": "text", "text": "plain"}},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert r.status_code == 200
        assert r.json()["replies"][-1]["content"]["text"] == "plain"
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(s.ws_url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"id": "p", "content": {"type": "text", "text": "ws"}}))
            assert json.loads(await ws.recv())["content"]["type"] == "ack"
        async with grpc.aio.insecure_channel(s.grpc_target) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        s.stop()
