"""Circuit breaker, retry budget and deadlines of ``Upstreams`` against a real back-end.

The back-end is an in-process ``grpc.aio`` server behind real mutual TLS that counts
every ``Converse`` call it receives, so a test can prove that a refused call never
reached it. The pool's breaker clock is a manual clock: the open time passes when the
test says so, not by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from dialog.backend.v1 import backend_pb2, backend_pb2_grpc
from dialog.v1 import message_pb2
from gateway import metrics
from gateway.backend_stream import time_left_request
from gateway.breaker import BreakerState
from gateway.certs import create_dev_certs
from gateway.config import BackendConfig, RetryPolicy, RoutesConfig
from gateway.errors import BackendUnavailable
from gateway.forwarding import Upstreams
from gateway.upstream import BackendPool

WAIT_S = 10.0


class CountingBackend(backend_pb2_grpc.BackendServicer):  # type: ignore[misc]
    """Answers every message with one final reply, or refuses every call with UNAVAILABLE."""

    def __init__(self) -> None:
        self.calls = 0
        self.requests: list[backend_pb2.ConverseRequest] = []
        self.refuse = False

    async def Converse(
        self, requests: AsyncIterator[backend_pb2.ConverseRequest], context: Any
    ) -> AsyncIterator[backend_pb2.ConverseResponse]:
        self.calls += 1
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "refusing calls")
        async for request in requests:
            self.requests.append(request)
            for msg in request.messages:
                reply = message_pb2.Message(role=message_pb2.ROLE_ASSISTANT)
                reply.content.type = "text"
                reply.context.reply_to = msg.id
                yield backend_pb2.ConverseResponse(messages=[reply])


class BackendServer:
    """The back-end's server; it can stop and start again on the same port."""

    def __init__(self, certs: Path, servicer: CountingBackend) -> None:
        self._certs = certs
        self.servicer = servicer
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        credentials = grpc.ssl_server_credentials(
            [
                (
                    (self._certs / "chat-key.pem").read_bytes(),
                    (self._certs / "chat.pem").read_bytes(),
                )
            ],
            root_certificates=(self._certs / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        server = grpc.aio.server()
        backend_pb2_grpc.add_BackendServicer_to_server(self.servicer, server)
        self.port = server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    create_dev_certs(tmp_path)
    return tmp_path


@pytest.fixture
async def backend(certs: Path) -> AsyncIterator[BackendServer]:
    server = BackendServer(certs, CountingBackend())
    await server.start()
    yield server
    await server.stop()


PoolFactory = Callable[..., BackendPool]


@pytest.fixture
async def make_pool(certs: Path, backend: BackendServer) -> AsyncIterator[PoolFactory]:
    """``make_pool(name, *, max_attempts=1, timeout_ms=5000, **pool_kwargs)``."""
    pools: list[BackendPool] = []

    def make(
        name: str, *, max_attempts: int = 1, timeout_ms: int = 5000, **kwargs: Any
    ) -> BackendPool:
        config = BackendConfig(
            name=name,
            target=f"127.0.0.1:{backend.port}",
            ca_file=str(certs / "ca.pem"),
            cert_file=str(certs / "gateway-client.pem"),
            key_file=str(certs / "gateway-client-key.pem"),
            server_name="chat",
            timeout_ms=timeout_ms,
            retry=RetryPolicy(max_attempts=max_attempts, initial_backoff_ms=10, max_backoff_ms=20),
        )
        routes = RoutesConfig(backends=(config,), rules=(), default_backend=name)
        pool = BackendPool(routes, max_message_bytes=1 << 20, base_dir=certs, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def message(msg_id: str) -> message_pb2.Message:
    msg = message_pb2.Message(id=msg_id, role=message_pb2.ROLE_USER)
    msg.content.type = "text"
    msg.content.text = "hello"
    return msg


async def send(upstreams: Upstreams, backend: str, msg_id: str) -> list[message_pb2.Message]:
    async with asyncio.timeout(WAIT_S):
        return [reply async for reply in upstreams.forward(backend, message(msg_id))]


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_dead_backend_opens_the_breaker_which_refuses_then_tries_and_closes(
    make_pool: PoolFactory, backend: BackendServer
) -> None:
    clock = ManualClock()
    pool = make_pool("breaker-a", breaker_failures=2, breaker_open_ms=500, clock=clock)
    upstreams = Upstreams(pool, "alice", reply_queue_max=16)
    opened_before = sample(
        "dialog_backend_breaker_transitions_total", backend="breaker-a", state="open"
    )
    try:
        assert (await send(upstreams, "breaker-a", "m1"))[-1].context.reply_to == "m1"
        assert pool.breaker_state("breaker-a") is BreakerState.CLOSED
        assert sample("dialog_backend_breaker_state", backend="breaker-a") == 0

        await backend.stop()
        for msg_id in ("m2", "m3"):
            with pytest.raises(BackendUnavailable):
                await send(upstreams, "breaker-a", msg_id)
        assert pool.breaker_state("breaker-a") is BreakerState.OPEN
        assert not pool.accepting("breaker-a")
        assert sample("dialog_backend_breaker_state", backend="breaker-a") == 2
        assert (
            sample("dialog_backend_breaker_transitions_total", backend="breaker-a", state="open")
            == opened_before + 1
        )
        assert pool.breakers_json()["breaker-a"] == {
            "state": "open",
            "consecutive_failures": 2,
            "open_remaining_ms": 500,
        }

        # The back-end is back, but the breaker is still open: calls are refused at once,
        # and none of them reaches the back-end.
        backend.servicer.calls = 0
        await backend.start()
        with pytest.raises(BackendUnavailable, match="circuit open"):
            await send(upstreams, "breaker-a", "m4")
        assert backend.servicer.calls == 0

        clock.now += 0.5
        assert pool.accepting("breaker-a")
        assert pool.breaker_state("breaker-a") is BreakerState.HALF_OPEN
        assert sample("dialog_backend_breaker_state", backend="breaker-a") == 1

        # Let the channel reconnect, so the trial call meets the back-end, not the
        # channel's reconnect back-off.
        async with asyncio.timeout(WAIT_S):
            await pool.channels["breaker-a"].channel_ready()
        assert (await send(upstreams, "breaker-a", "m5"))[-1].context.reply_to == "m5"
        assert backend.servicer.calls == 1
        assert pool.breaker_state("breaker-a") is BreakerState.CLOSED
        assert sample("dialog_backend_breaker_state", backend="breaker-a") == 0
    finally:
        await upstreams.aclose()


async def test_a_failed_trial_reopens_the_breaker(
    make_pool: PoolFactory, backend: BackendServer
) -> None:
    clock = ManualClock()
    pool = make_pool("breaker-b", breaker_failures=1, breaker_open_ms=500, clock=clock)
    upstreams = Upstreams(pool, "alice", reply_queue_max=16)
    backend.servicer.refuse = True
    try:
        with pytest.raises(BackendUnavailable):
            await send(upstreams, "breaker-b", "m1")
        assert pool.breaker_state("breaker-b") is BreakerState.OPEN
        clock.now += 0.5
        assert pool.breaker_state("breaker-b") is BreakerState.HALF_OPEN
        calls = backend.servicer.calls
        with pytest.raises(BackendUnavailable):
            await send(upstreams, "breaker-b", "m2")
        assert backend.servicer.calls == calls + 1  # the trial reached the back-end
        assert pool.breaker_state("breaker-b") is BreakerState.OPEN
    finally:
        await upstreams.aclose()


@pytest.mark.parametrize(
    ("budget", "calls", "allowed", "denied"),
    [
        pytest.param({}, 3, 2, 0, id="default budget: every retry"),
        pytest.param(
            {"retry_budget_ratio": 0.0, "retry_budget_min_per_s": 0.0}, 1, 0, 1, id="no budget"
        ),
    ],
)
async def test_the_retry_budget_decides_whether_a_retry_is_made(
    make_pool: PoolFactory,
    backend: BackendServer,
    budget: dict[str, float],
    calls: int,
    allowed: int,
    denied: int,
) -> None:
    name = f"budget-{calls}"
    pool = make_pool(name, max_attempts=3, breaker_failures=100, **budget)
    upstreams = Upstreams(pool, "alice", reply_queue_max=16)
    before = {
        o: sample("dialog_backend_retries_total", backend=name, outcome=o)
        for o in ("allowed", "denied")
    }
    backend.servicer.refuse = True
    try:
        with pytest.raises(BackendUnavailable):
            await send(upstreams, name, "m1")
    finally:
        await upstreams.aclose()
    assert backend.servicer.calls == calls
    assert sample("dialog_backend_retries_total", backend=name, outcome="allowed") == (
        before["allowed"] + allowed
    )
    assert sample("dialog_backend_retries_total", backend=name, outcome="denied") == (
        before["denied"] + denied
    )


async def test_the_backend_receives_the_time_left(
    make_pool: PoolFactory, backend: BackendServer
) -> None:
    pool = make_pool("deadline", timeout_ms=5000)
    upstreams = Upstreams(pool, "alice", reply_queue_max=16)
    try:
        await send(upstreams, "deadline", "m1")
    finally:
        await upstreams.aclose()
    [request] = backend.servicer.requests
    assert [m.id for m in request.messages] == ["m1"]
    left = request.timeouts["m1"].ToTimedelta().total_seconds()
    assert 0 < left <= 5.0


async def test_a_message_past_its_deadline_is_sent_with_no_time_left() -> None:
    late, on_time, no_deadline = message("late"), message("on-time"), message("none")
    request = time_left_request([(late, 9.0), (on_time, 12.5), (no_deadline, None)], now=10.0)
    assert [m.id for m in request.messages] == ["late", "on-time", "none"]
    assert request.timeouts["late"].ToNanoseconds() == 0
    assert request.timeouts["on-time"].ToNanoseconds() == 2_500_000_000
    assert "none" not in request.timeouts
