"""Outlier ejection of a multi-address back-end, with real back-ends behind real mutual TLS.

One back-end, two addresses: two in-process ``grpc.aio`` servers (tests/component/
test_backend_resilience.py), one answering every call, the other refusing every call with
UNAVAILABLE. The ``BackendPool``'s channel balances over both (round robin), and gRPC's
outlier detection (gRFC A50) ejects the failing one, then tries it again once the ejection
time has passed. Those timers run inside gRPC on its own clock, so the pool is given a
short ``OutlierPolicy`` (the production one is checked in tests/unit/test_discovery.py);
the calls go straight to the pool's channel, so that the back-end's circuit breaker, which
the gateway's calls also go through, plays no part. Neither the metrics nor ``/health``
report an ejection: gRPC does not expose it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dialog.backend.v1 import backend_pb2, backend_pb2_grpc
from gateway.certs import create_dev_certs
from gateway.config import BackendConfig, RoutesConfig
from gateway.discovery import OutlierPolicy
from gateway.upstream import BackendPool
from tests.component.test_backend_resilience import BackendServer, CountingBackend, message

CALL_TIMEOUT_S = 5.0
POLICY = OutlierPolicy(
    interval_s=0.2,
    base_ejection_s=1.5,
    max_ejection_s=10.0,
    max_ejection_percent=50,
    threshold_percent=85,
    minimum_hosts=2,
    request_volume=5,
)
# Calls in a row that all reach the healthy address: with round robin over both, every
# other call would reach the failing one, unless it is ejected.
IN_A_ROW = 20


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    create_dev_certs(tmp_path)
    return tmp_path


@pytest.fixture
async def servers(certs: Path) -> AsyncIterator[tuple[BackendServer, BackendServer]]:
    healthy, failing = (
        BackendServer(certs, CountingBackend()),
        BackendServer(certs, CountingBackend()),
    )
    failing.servicer.refuse = True
    await healthy.start()
    await failing.start()
    yield healthy, failing
    await healthy.stop()
    await failing.stop()


@pytest.fixture
async def pool(
    certs: Path, servers: tuple[BackendServer, BackendServer]
) -> AsyncIterator[BackendPool]:
    healthy, failing = servers
    config = BackendConfig(
        name="pair",
        target=f"127.0.0.1:{healthy.port},127.0.0.1:{failing.port}",
        ca_file=str(certs / "ca.pem"),
        cert_file=str(certs / "gateway-client.pem"),
        key_file=str(certs / "gateway-client-key.pem"),
        server_name="chat",
    )
    routes = RoutesConfig(backends=(config,), rules=(), default_backend="pair")
    pool = BackendPool(routes, max_message_bytes=1 << 20, base_dir=certs, outlier=POLICY)
    yield pool
    await pool.close()


async def call(channel: grpc.aio.Channel, msg_id: str) -> bool:
    """One ``Converse`` call with one message: whether it ended OK."""
    stub = backend_pb2_grpc.BackendStub(channel)
    request = backend_pb2.ConverseRequest(messages=[message(msg_id)])
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            stream = stub.Converse(iter([request]))
            async for _ in stream:
                pass
    except grpc.aio.AioRpcError:
        # UNAVAILABLE from the refusing server; or INTERNAL when its refusal ends the call
        # before the request is written. Which server had the call, its count says.
        return False
    return True


async def test_a_failing_address_is_ejected_then_tried_again_after_the_ejection_time(
    pool: BackendPool, servers: tuple[BackendServer, BackendServer]
) -> None:
    healthy, failing = servers
    channel = pool.channels["pair"]
    sent = 0

    async def next_call() -> bool:
        nonlocal sent
        sent += 1
        return await call(channel, f"m{sent}")

    # Round robin: once both addresses are connected, both get calls.
    async with asyncio.timeout(10):
        while not (healthy.servicer.calls and failing.servicer.calls):
            await next_call()

    # Failing nearly all its calls, the failing address is ejected at the next interval:
    # from then on every call reaches the healthy one.
    in_a_row = 0
    async with asyncio.timeout(10):
        while in_a_row < IN_A_ROW:
            failed_before = failing.servicer.calls
            ok = await next_call()
            in_a_row = in_a_row + 1 if ok and failing.servicer.calls == failed_before else 0
    ejected_at = time.monotonic()
    failed_at_ejection = failing.servicer.calls
    assert failed_at_ejection >= POLICY.request_volume

    # After the ejection time it is tried again (and, failing again, ejected again).
    failed_calls = 0
    async with asyncio.timeout(POLICY.base_ejection_s + 10):
        while failing.servicer.calls == failed_at_ejection:
            failed_calls += not await next_call()
            await asyncio.sleep(0.02)  # a steady trickle of calls, not a busy loop
    back_after_s = time.monotonic() - ejected_at
    # It cannot come back early; the ejection was seen IN_A_ROW calls after it began.
    assert back_after_s >= POLICY.base_ejection_s / 2, back_after_s
    # Only the call that found it back failed: the healthy address answered the others.
    assert failed_calls == 1
    assert failing.servicer.calls == failed_at_ejection + 1
    assert healthy.servicer.calls > IN_A_ROW
