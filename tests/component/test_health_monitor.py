"""HealthMonitor against real back-end gRPC servers on loopback, over real mutual TLS.

Each back-end is an in-process ``grpc.aio`` server that requires a client
certificate and serves the standard health service; the gateway's own health
servicer is served by a second in-process server and read back with a real client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from gateway import metrics
from gateway.certs import create_dev_certs
from gateway.health import HealthMonitor
from gateway.store.sqlite import DB_NAME, SQLiteStore

NOW_S = 1_714_564_800.0  # 2024-05-01T12:00:00Z
NOW_ISO = "2024-05-01T12:00:00.000Z"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WAIT_S = 5.0  # overall deadline for conditions polled below


def fixed_clock() -> float:
    return NOW_S


@dataclass
class Backend:
    """A back-end server with the standard health service, reachable over mTLS."""

    name: str
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int

    async def stop(self) -> None:
        await self.server.stop(grace=None)


async def start_backend(certs: Path, name: str) -> Backend:
    credentials = grpc.ssl_server_credentials(
        [((certs / f"{name}-key.pem").read_bytes(), (certs / f"{name}.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    await health.set("", SERVING)
    return Backend(name, server, health, port)


def mtls_channel(
    certs: Path, name: str, port: int, *, client_cert: bool = True
) -> grpc.aio.Channel:
    """The gateway's side: CA-verified server named ``name``, gateway client certificate."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "gateway-client-key.pem").read_bytes() if client_cert else None,
        certificate_chain=(certs / "gateway-client.pem").read_bytes() if client_cert else None,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[("grpc.ssl_target_name_override", name)],
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    create_dev_certs(directory)
    return directory


@pytest.fixture
async def chat(certs: Path) -> AsyncIterator[Backend]:
    backend = await start_backend(certs, "chat")
    yield backend
    await backend.stop()


@pytest.fixture
async def chat_channel(certs: Path, chat: Backend) -> AsyncIterator[grpc.aio.Channel]:
    channel = mtls_channel(certs, "chat", chat.port)
    yield channel
    await channel.close(grace=None)


@dataclass
class GatewayHealth:
    """The gateway's own health servicer, served on loopback, and a real client for it."""

    servicer: health_aio.HealthServicer
    stub: health_pb2_grpc.HealthStub

    async def status_of(self, service: str) -> str:
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self.stub.Check(request, timeout=2.0)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@pytest.fixture
async def gateway_health() -> AsyncIterator[GatewayHealth]:
    servicer = health_aio.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield GatewayHealth(servicer, health_pb2_grpc.HealthStub(channel))
    await channel.close(grace=None)
    await server.stop(grace=None)


def backend_up(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("dialog_gateway_backend_up", {"backend": name})


async def test_serving_backend_over_mtls(
    chat_channel: grpc.aio.Channel, gateway_health: GatewayHealth
) -> None:
    servicer, status_of = gateway_health.servicer, gateway_health.status_of
    monitor = HealthMonitor(
        {"chat": chat_channel},
        {"chat": True},
        interval_ms=100,
        timeout_ms=2000,
        servicer=servicer,
        clock=fixed_clock,
    )
    before = monitor.snapshot()
    assert before["status"] == "NOT_SERVING"
    assert before["backends"]["chat"]["status"] == "UNKNOWN"
    assert not monitor.overall_ok()

    await monitor.check_once()

    body = monitor.snapshot()
    chat = body["backends"]["chat"]
    assert body["status"] == "SERVING"
    assert monitor.overall_ok()
    assert chat["status"] == "SERVING"
    assert chat["required"] is True
    assert chat["last_success_at"] == NOW_ISO
    assert 0 < chat["last_check_latency_ms"] < 2000
    assert (chat["consecutive_failures"], chat["checks_total"], chat["failures_total"]) == (0, 1, 0)
    assert backend_up("chat") == 1.0
    assert await status_of("chat") == "SERVING"
    assert await status_of("") == "SERVING"


async def test_backend_reporting_not_serving(
    chat: Backend,
    chat_channel: grpc.aio.Channel,
    gateway_health: GatewayHealth,
) -> None:
    servicer, status_of = gateway_health.servicer, gateway_health.status_of
    monitor = HealthMonitor(
        {"chat": chat_channel},
        {"chat": True},
        interval_ms=100,
        timeout_ms=2000,
        servicer=servicer,
        clock=fixed_clock,
    )
    await monitor.check_once()
    assert monitor.backend("chat").status == "SERVING"

    await chat.health.set("", NOT_SERVING)
    await monitor.check_once()

    chat_body = monitor.snapshot()["backends"]["chat"]
    assert chat_body["status"] == "NOT_SERVING"
    assert chat_body["last_success_at"] == NOW_ISO  # the last success is kept
    assert (chat_body["consecutive_failures"], chat_body["failures_total"]) == (1, 1)
    assert chat_body["checks_total"] == 2
    assert not monitor.overall_ok()
    assert monitor.snapshot()["status"] == "NOT_SERVING"
    assert backend_up("chat") == 0.0
    assert await status_of("chat") == "NOT_SERVING"
    assert await status_of("") == "NOT_SERVING"

    await chat.health.set("", SERVING)
    await monitor.check_once()
    assert monitor.overall_ok()
    assert monitor.backend("chat").consecutive_failures == 0
    assert monitor.backend("chat").failures_total == 1
    assert await status_of("") == "SERVING"


async def test_stopped_backend_counts_failures(
    chat: Backend,
    chat_channel: grpc.aio.Channel,
    gateway_health: GatewayHealth,
) -> None:
    servicer, status_of = gateway_health.servicer, gateway_health.status_of
    monitor = HealthMonitor(
        {"chat": chat_channel},
        {"chat": True},
        interval_ms=100,
        timeout_ms=1000,
        servicer=servicer,
        clock=fixed_clock,
    )
    await monitor.check_once()
    assert monitor.overall_ok()

    await chat.stop()
    await monitor.check_once()
    first = monitor.backend("chat")
    await monitor.check_once()
    second = monitor.backend("chat")

    assert first.status == second.status == "NOT_SERVING"
    assert (first.consecutive_failures, second.consecutive_failures) == (1, 2)
    assert (second.checks_total, second.failures_total) == (3, 2)
    assert second.last_success_at == NOW_S
    assert second.last_check_latency_ms is not None
    assert second.last_check_latency_ms < 1000 + 500  # bounded by the check deadline
    assert not monitor.overall_ok()
    assert backend_up("chat") == 0.0
    assert await status_of("chat") == "NOT_SERVING"
    assert await status_of("") == "NOT_SERVING"


async def test_optional_backend_down_keeps_gateway_serving(
    certs: Path,
    chat_channel: grpc.aio.Channel,
    gateway_health: GatewayHealth,
) -> None:
    servicer, status_of = gateway_health.servicer, gateway_health.status_of
    tasks = await start_backend(certs, "tasks")
    tasks_channel = mtls_channel(certs, "tasks", tasks.port)
    await tasks.stop()
    try:
        monitor = HealthMonitor(
            {"chat": chat_channel, "tasks": tasks_channel},
            {"chat": True, "tasks": False},
            interval_ms=100,
            timeout_ms=1000,
            servicer=servicer,
            clock=fixed_clock,
        )
        await monitor.check_once()
    finally:
        await tasks_channel.close(grace=None)

    body = monitor.snapshot()
    assert body["status"] == "SERVING"
    assert body["backends"]["chat"]["status"] == "SERVING"
    assert body["backends"]["tasks"]["status"] == "NOT_SERVING"
    assert body["backends"]["tasks"]["required"] is False
    assert backend_up("tasks") == 0.0
    assert await status_of("tasks") == "NOT_SERVING"
    assert await status_of("") == "SERVING"


async def test_client_without_certificate_is_not_serving(certs: Path, chat: Backend) -> None:
    """The back-end requires client certificates, so the check fails without one."""
    channel = mtls_channel(certs, "chat", chat.port, client_cert=False)
    try:
        monitor = HealthMonitor({"chat": channel}, {"chat": True}, interval_ms=100, timeout_ms=1000)
        await monitor.check_once()
    finally:
        await channel.close(grace=None)
    assert monitor.backend("chat").status == "NOT_SERVING"
    assert monitor.backend("chat").failures_total == 1


async def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` every few milliseconds until it holds, or fail at the deadline."""
    async with asyncio.timeout(timeout_s):
        while True:  # until the condition holds or the deadline cancels the wait
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_run_loop_notices_a_dead_backend(
    chat: Backend,
    chat_channel: grpc.aio.Channel,
    gateway_health: GatewayHealth,
) -> None:
    servicer, status_of = gateway_health.servicer, gateway_health.status_of
    await servicer.set("", SERVING)  # the servicer's default: run() must not trust it
    monitor = HealthMonitor(
        {"chat": chat_channel},
        {"chat": True},
        interval_ms=100,
        timeout_ms=1000,
        servicer=servicer,
    )
    runner = asyncio.create_task(monitor.run(), name="health-monitor")
    try:
        await wait_until(lambda: monitor.backend("chat").status == "SERVING")
        # the loop keeps going on its own
        checks = monitor.backend("chat").checks_total
        await wait_until(lambda: monitor.backend("chat").checks_total >= checks + 2)
        assert await status_of("") == "SERVING"

        await chat.stop()
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        await wait_until(lambda: monitor.backend("chat").status == "NOT_SERVING")
        # within interval_ms + timeout_ms (plus scheduling slack)
        assert loop.time() - stopped_at < 0.1 + 1.0 + 0.5
        assert not monitor.overall_ok()
        assert await status_of("") == "NOT_SERVING"
        failures = monitor.backend("chat").consecutive_failures
        await wait_until(lambda: monitor.backend("chat").consecutive_failures > failures)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(WAIT_S):
                await runner
    assert runner.cancelled()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers: TLS handshakes hang."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client hangs up
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    async with asyncio.timeout(WAIT_S):
        await server.wait_closed()


async def test_silent_backend_hits_the_deadline_and_run_publishes_unknown_first(
    certs: Path, silent_port: int, gateway_health: GatewayHealth
) -> None:
    servicer, status_of = gateway_health.servicer, gateway_health.status_of
    assert await status_of("") == "SERVING"  # HealthServicer's default
    channel = mtls_channel(certs, "chat", silent_port)
    monitor = HealthMonitor(
        {"chat": channel}, {"chat": True}, interval_ms=100, timeout_ms=300, servicer=servicer
    )
    runner = asyncio.create_task(monitor.run(), name="health-monitor")
    try:
        # Before the first check ends, the gateway already reports itself NOT_SERVING.
        assert await status_of("") == "NOT_SERVING"
        assert await status_of("chat") == "UNKNOWN"
        assert monitor.backend("chat").checks_total == 0

        await wait_until(lambda: monitor.backend("chat").checks_total >= 1)
        record = monitor.backend("chat")
        assert record.status == "NOT_SERVING"
        assert record.last_check_latency_ms is not None
        assert 300 * 0.9 <= record.last_check_latency_ms < 300 + 500
        assert await status_of("chat") == "NOT_SERVING"
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(WAIT_S):
                await runner
        await channel.close(grace=None)


def test_mismatched_names_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        HealthMonitor({}, {"chat": True}, interval_ms=100, timeout_ms=100)


@pytest.mark.parametrize(("interval_ms", "timeout_ms"), [(0, 100), (100, 0)])
def test_non_positive_timings_are_refused(interval_ms: int, timeout_ms: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        HealthMonitor({}, {}, interval_ms=interval_ms, timeout_ms=timeout_ms)


async def test_a_store_that_stops_answering_makes_the_gateway_not_serving(
    chat_channel: grpc.aio.Channel, gateway_health: GatewayHealth, tmp_path: Path
) -> None:
    store = await SQLiteStore.open(tmp_path / DB_NAME)
    monitor = HealthMonitor(
        {"chat": chat_channel},
        {"chat": True},
        interval_ms=100,
        timeout_ms=2000,
        servicer=gateway_health.servicer,
        store=store.ping,
    )
    assert monitor.snapshot()["store"] == {"status": "UNKNOWN"}
    await monitor.check_once()
    assert monitor.snapshot()["store"] == {"status": "SERVING"}
    assert monitor.overall_ok()
    assert metrics.REGISTRY.get_sample_value("dialog_gateway_store_up") == 1.0

    await store.close()  # from now on every call fails, as with a dead disk or Redis
    await monitor.check_once()
    body = monitor.snapshot()
    assert body["store"] == {"status": "NOT_SERVING"}
    assert body["status"] == "NOT_SERVING"
    assert body["backends"]["chat"]["status"] == "SERVING"
    assert not monitor.overall_ok()
    assert await gateway_health.status_of("") == "NOT_SERVING"
    assert metrics.REGISTRY.get_sample_value("dialog_gateway_store_up") == 0.0
