"""``MAX_INFLIGHT`` counts the calls the gateway relays, on the gRPC port (``gateway.grpc.proxy``)
and over HTTP/JSON (``gateway.http.transcoding``), in the same count as dialog messages
(``DialogService.inflight``): the gateway's gRPC server and HTTP app in-process on loopback,
real clients, and a real probe back-end behind mutual TLS (``tests/support/probe.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway import metrics
from gateway.auth import mint_token
from gateway.certs import create_dev_certs
from gateway.config import GatewayConfig, RoutesConfig
from gateway.service import DialogService
from tests.support.in_process import probe_backend, proxying_gateway
from tests.support.probe import SERVICE, ProbeTypes, RunningProbe, start_probe

SECRET = "component-test-secret-component-test-secret"
TIMEOUT_S = 10.0
MAX_INFLIGHT = 2
BACKEND_TIMEOUT_MS = 1500  # how long a unary call whose HTTP client went away still holds on
TYPES = ProbeTypes.build()


@dataclass
class Gateway:
    service: DialogService
    channel: grpc.aio.Channel
    http_url: str

    def auth(self, sub: str = "alice") -> tuple[tuple[str, str], ...]:
        token = mint_token(SECRET, sub, now_s=time.time(), ttl_s=600)
        return (("authorization", f"Bearer {token}"),)

    def http(self, sub: str = "alice") -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url, headers=dict(self.auth(sub)), timeout=10)

    def unary(self, method: str) -> Any:
        return self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=TYPES.Request.SerializeToString,
            response_deserializer=TYPES.Reply.FromString,
        )


@pytest.fixture
async def probe(tmp_path: Path) -> AsyncIterator[RunningProbe]:
    create_dev_certs(tmp_path / "pki")
    running = await start_probe(tmp_path / "pki")
    yield running
    await running.stop()


@pytest.fixture
async def gateway(tmp_path: Path, probe: RunningProbe) -> AsyncIterator[Gateway]:
    """The gRPC port and the HTTPS port's app (plain HTTP here) of one ``DialogService``
    with ``MAX_INFLIGHT`` 2, in front of the probe."""
    backend = probe_backend("probe", probe.port, tmp_path / "pki", BACKEND_TIMEOUT_MS)
    config = GatewayConfig(
        jwt_secret=SECRET,
        tls=False,
        port=0,
        grpc_port=0,
        max_inflight=MAX_INFLIGHT,
        data_dir=str(tmp_path / "data"),
        routes=RoutesConfig(backends=(backend,), rules=(), default_backend=None),
    )
    async with proxying_gateway(config, tmp_path, "probe") as running:
        yield Gateway(running.service, running.channel, running.http_url)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for ``predicate`` (checked on every turn of the loop), at most ``TIMEOUT_S``."""
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def refused_inflight(surface: str) -> float:
    labels = {"surface": surface, "limit": "inflight"}
    return metrics.REGISTRY.get_sample_value("dialog_gateway_rate_limited_total", labels) or 0.0


def held(probe: RunningProbe) -> int:
    return probe.probe.calls.count("Probe/Hold")


async def test_relayed_grpc_calls_fill_the_limit_and_give_their_places_back(
    gateway: Gateway, probe: RunningProbe
) -> None:
    hold = gateway.unary("Hold")
    holds = [hold(TYPES.Request(), metadata=gateway.auth(), timeout=TIMEOUT_S) for _ in range(2)]
    await until(lambda: held(probe) == 2, "two calls held by the back-end")
    assert gateway.service.inflight == MAX_INFLIGHT
    before = refused_inflight("grpc")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.unary("Echo")(TYPES.Request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == "the gateway is busy; try again shortly"
    assert dict(refused.value.trailing_metadata() or ())["retry-after"] == "1"
    assert refused_inflight("grpc") == before + 1
    assert "Probe/Echo" not in probe.probe.calls  # refused before the back-end

    for call in holds:
        call.cancel()
    await until(lambda: gateway.service.inflight == 0, "the places given back")
    reply = await gateway.unary("Echo")(TYPES.Request(text="again"), metadata=gateway.auth())
    assert reply.text == "again"
    assert gateway.service.inflight == 0


async def test_transcoded_calls_share_the_count_with_relayed_grpc_calls(
    gateway: Gateway, probe: RunningProbe
) -> None:
    grpc_hold = gateway.unary("Hold")(TYPES.Request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    async with gateway.http() as http:
        http_hold = asyncio.create_task(http.post(f"/{SERVICE}/Hold", json={}), name="http hold")
        await until(lambda: held(probe) == 2, "one gRPC and one HTTP call held")
        assert gateway.service.inflight == MAX_INFLIGHT
        before = refused_inflight("http")

        busy = await http.post(f"/{SERVICE}/Echo", json={"text": "x"})
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"] == {
            "code": "server_busy",
            "message": "the gateway is busy; try again shortly",
            "details": [],
        }
        assert refused_inflight("http") == before + 1
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.unary("Echo")(TYPES.Request(), metadata=gateway.auth())
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

        grpc_hold.cancel()
        await until(lambda: gateway.service.inflight == 1, "the gRPC call's place given back")
        # The HTTP call holds its place until the back-end's timeout_ms ends it.
        answer = await asyncio.wait_for(http_hold, TIMEOUT_S)
        assert answer.status_code == 504, answer.text
        await until(lambda: gateway.service.inflight == 0, "the HTTP call's place given back")
        again = await http.post(f"/{SERVICE}/Echo", json={"text": "again"})
    assert (again.status_code, again.json()["text"]) == (200, "again")
    assert gateway.service.inflight == 0


async def test_ended_streams_and_failed_calls_give_their_places_back(
    gateway: Gateway, probe: RunningProbe
) -> None:
    async with gateway.http() as http:
        counted = await http.post(f"/{SERVICE}/Count", json={"count": 3})
        failed = await http.post(f"/{SERVICE}/Fail", json={"code": 5, "text": "gone"})
        with pytest.raises(grpc.aio.AioRpcError):
            await gateway.unary("Fail")(TYPES.Request(code=5), metadata=gateway.auth())
    assert counted.status_code == 200
    assert [line for line in counted.text.splitlines() if line] == [
        '{"result":{"text":"0"}}',
        '{"result":{"text":"1"}}',
        '{"result":{"text":"2"}}',
    ]
    assert failed.status_code == 404
    await until(lambda: gateway.service.inflight == 0, "every place given back")
