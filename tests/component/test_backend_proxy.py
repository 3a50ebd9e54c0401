"""The public gRPC port as a transparent proxy (``gateway.grpc.proxy``) with aggregated
reflection (``gateway.grpc.reflection``): the gateway's gRPC server in-process on loopback, a
real client, and a real back-end behind mutual TLS (``tests/support/probe.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import _async as probe_health
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from gateway import metrics
from gateway.auth import mint_token
from gateway.certs import create_dev_certs
from gateway.config import BackendConfig, GatewayConfig, RoutesConfig
from gateway.grpc.reflection import BackendReflection
from gateway.grpc.server import build_grpc_server
from gateway.lifecycle import UNFINISHED, Phase
from gateway.service import DialogService
from tests.support.probe import (
    BACKEND_SERVICE,
    EXTRA_SERVICE,
    SERVED_BY,
    SERVICE,
    STATUS_DETAILS,
    TRAILER_BIN,
    TRAILER_BIN_VALUE,
    Probe,
    ProbeTypes,
    RunningProbe,
    start_probe,
    start_secure,
)

SECRET = "component-test-secret-component-test-secret"
TIMEOUT_S = 10.0
TYPES = ProbeTypes.build()
KINDS = {
    "Echo": "unary_unary",
    "Secret": "unary_unary",
    "Fail": "unary_unary",
    "Hold": "unary_unary",
    "Count": "unary_stream",
    "Collect": "stream_unary",
    "Chat": "stream_stream",
}


def request(text: str = "", **fields: Any) -> Any:
    return TYPES.Request(text=text, **fields)


def backend_config(pki: Path, name: str, port: int, **fields: Any) -> BackendConfig:
    return BackendConfig(
        name=name,
        target=f"127.0.0.1:{port}",
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "gateway-client.pem"),
        key_file=str(pki / "gateway-client-key.pem"),
        server_name="chat",
        timeout_ms=7000,
        **fields,
    )


@dataclass
class Gateway:
    """The gateway's gRPC surface, and a client channel to it."""

    service: DialogService
    reflection: BackendReflection
    channel: grpc.aio.Channel
    port: int

    def token(self, sub: str = "alice", *scopes: str) -> str:
        return mint_token(SECRET, sub, now_s=time.time(), ttl_s=600, scopes=scopes)

    def auth(self, sub: str = "alice", *scopes: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(sub, *scopes)}"),)

    def probe(self, method: str, service: str = SERVICE) -> Any:
        """A client of ``service``/``method`` of the probe, through the gateway."""
        kind = KINDS.get(method, "unary_unary")
        return getattr(self.channel, kind)(
            f"/{service}/{method}",
            request_serializer=TYPES.Request.SerializeToString,
            response_deserializer=TYPES.Reply.FromString,
        )


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    create_dev_certs(directory)
    return directory


@pytest.fixture
async def probes(pki: Path) -> AsyncIterator[Callable[..., Awaitable[RunningProbe]]]:
    """``await start(name="probe", **options of start_probe)``: a probe back-end, stopped
    after the test."""
    running: list[RunningProbe] = []

    async def start(name: str = "probe", **options: Any) -> RunningProbe:
        probe = await start_probe(pki, name=name, **options)
        running.append(probe)
        return probe

    yield start
    for probe in running:
        await probe.stop()


@pytest.fixture
async def probe(probes: Callable[..., Awaitable[RunningProbe]]) -> RunningProbe:
    return await probes()


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """``await start(*backends, follow=False, **config)``: the gateway's gRPC server with
    every back-end's reflection read once (``follow``: and kept up to date)."""
    started: list[tuple[Gateway, Any, asyncio.Task[None] | None]] = []

    async def start(*backends: BackendConfig, follow: bool = False, **overrides: Any) -> Gateway:
        config = GatewayConfig(
            jwt_secret=SECRET,
            tls=False,
            grpc_port=0,
            data_dir=str(tmp_path / "data"),
            routes=RoutesConfig(backends=backends, rules=(), default_backend=None),
            **overrides,
        )
        service = DialogService(config, base_dir=tmp_path)
        await service.start()
        reflection = BackendReflection(
            service.pool.channels, config.routes, refresh_s=3600, timeout_s=TIMEOUT_S
        )
        for backend in backends:
            await reflection.refresh(backend.name)
        server, port = build_grpc_server(
            service, health_aio.HealthServicer(), reflection, credentials=None
        )
        await server.start()
        task = asyncio.create_task(reflection.run(), name="reflection") if follow else None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        gateway = Gateway(service, reflection, channel, port)
        started.append((gateway, server, task))
        return gateway

    yield start
    for gateway, server, task in started:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await gateway.channel.close()
        await server.stop(None)
        await gateway.service.close()


@pytest.fixture
async def gateway(start_gateway: StartGateway, probe: RunningProbe, pki: Path) -> Gateway:
    """A gateway in front of one probe back-end (learned from its reflection), which
    forwards ``x-probe-bin`` too and requires ``probe:secret`` for ``Secret``."""
    backend = backend_config(
        pki,
        "probe",
        probe.port,
        forward_metadata=("x-probe-bin",),
        method_scopes={f"{SERVICE}/Secret": ("probe:secret",)},
    )
    return await start_gateway(backend)


def headers_of(reply: Any) -> dict[str, list[bytes]]:
    seen: dict[str, list[bytes]] = {}
    for header in reply.headers:
        seen.setdefault(header.key, []).append(header.value)
    return seen


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# --- the four kinds of call --------------------------------------------------------------------


async def test_unary_call_reaches_the_backend_with_allowed_metadata_only(
    gateway: Gateway, probe: RunningProbe
) -> None:
    metadata = (
        *gateway.auth("alice"),
        ("x-request-id", "req-1"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-probe-bin", b"\x00\x01\xfe\xff"),
        ("x-dialog-user", "mallory"),
        ("cookie", "session=1"),
        ("x-not-listed", "dropped"),
    )
    call = gateway.probe("Echo")(request("hello"), metadata=metadata, timeout=TIMEOUT_S)
    reply = await call
    assert reply.text == "hello"
    seen = headers_of(reply)
    assert seen["x-dialog-user"] == [b"alice"]
    assert seen["x-request-id"] == [b"req-1"]
    assert seen["traceparent"] == [b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    assert seen["x-probe-bin"] == [b"\x00\x01\xfe\xff"]
    for name in ("authorization", "cookie", "x-not-listed", "x-dialog-client"):
        assert name not in seen
    assert (SERVED_BY, "probe") in tuple(await call.initial_metadata())
    assert probe.probe.calls == ["Probe/Echo"]


async def test_server_stream(gateway: Gateway) -> None:
    call = gateway.probe("Count")(request(count=3), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert [reply.text async for reply in call] == ["0", "1", "2"]
    assert await call.code() is grpc.StatusCode.OK


async def test_client_stream(gateway: Gateway) -> None:
    async def requests() -> AsyncIterator[Any]:
        for word in ("one", "two", "three"):
            yield request(word)

    reply = await gateway.probe("Collect")(requests(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert reply.text == "one two three"


async def test_bidi_stream_answers_each_request_as_it_comes(gateway: Gateway) -> None:
    call = gateway.probe("Chat")(metadata=gateway.auth(), timeout=TIMEOUT_S)
    for word in ("ping", "pong"):
        await call.write(request(word))
        reply = await asyncio.wait_for(call.read(), TIMEOUT_S)
        assert reply.text == word
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


# --- status, deadlines, cancellation -----------------------------------------------------------


async def test_status_details_and_trailers_come_back_intact(gateway: Gateway) -> None:
    call = gateway.probe("Fail")(
        request("no such thing", code=grpc.StatusCode.NOT_FOUND.value[0]),
        metadata=gateway.auth(),
        timeout=TIMEOUT_S,
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no such thing"
    trailers = dict(failed.value.trailing_metadata() or ())
    assert trailers[TRAILER_BIN] == TRAILER_BIN_VALUE
    assert trailers["grpc-status-details-bin"] == STATUS_DETAILS


async def test_the_callers_deadline_reaches_the_backend(gateway: Gateway) -> None:
    # gRPC rounds a deadline up to its wire encoding's unit: allow for it.
    reply = await gateway.probe("Echo")(request(), metadata=gateway.auth(), timeout=4)
    assert 0 < reply.timeout_s < 4.5
    # Without a deadline, a unary call gets the back-end's timeout_ms (7 s here).
    reply = await gateway.probe("Echo")(request(), metadata=gateway.auth())
    assert 5 < reply.timeout_s < 7.5


async def test_a_deadline_that_passes_cancels_the_backend_call(
    gateway: Gateway, probe: RunningProbe
) -> None:
    call = gateway.probe("Hold")(request(), metadata=gateway.auth(), timeout=1)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # The back-end got the caller's deadline (gRPC rounds it up to its wire encoding's
    # unit), not the back-end's timeout_ms (7 s).
    assert probe.probe.hold_timeout_s is not None and probe.probe.hold_timeout_s < 1.5
    await asyncio.wait_for(probe.probe.cancelled.wait(), TIMEOUT_S)


async def test_a_client_that_cancels_cancels_the_backend_call(
    gateway: Gateway, probe: RunningProbe
) -> None:
    call = gateway.probe("Hold")(request(), metadata=gateway.auth())
    await asyncio.wait_for(probe.probe.held.wait(), TIMEOUT_S)
    call.cancel()
    await asyncio.wait_for(probe.probe.cancelled.wait(), TIMEOUT_S)


async def test_a_backend_that_is_down_is_unavailable(
    start_gateway: StartGateway, pki: Path
) -> None:
    from tests.support.stack import free_port

    down = backend_config(pki, "down", free_port(), services=("probe.v1.Down",))
    gateway = await start_gateway(down)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gateway.probe("Echo", "probe.v1.Down")(
            request(), metadata=gateway.auth(), timeout=TIMEOUT_S
        )
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


# --- admission: token, route, scopes, rate, drain ----------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer not-a-token"),), (("authorization", "Basic YTpi"),)],
    ids=["no token", "bad token", "not bearer"],
)
async def test_a_call_without_a_valid_token_never_reaches_the_backend(
    gateway: Gateway, probe: RunningProbe, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await gateway.probe("Echo")(request(), metadata=metadata, timeout=TIMEOUT_S)
    assert unary.value.code() is grpc.StatusCode.UNAUTHENTICATED
    stream = gateway.probe("Count")(request(count=1), metadata=metadata, timeout=TIMEOUT_S)
    with pytest.raises(grpc.aio.AioRpcError) as streaming:
        [reply async for reply in stream]
    assert streaming.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert probe.probe.calls == []


@pytest.mark.parametrize(
    ("service", "method"),
    [
        ("probe.v1.Nowhere", "Echo"),
        (SERVICE, "Echo/Extra"),
        # The back-end contract: the probe serves it and its reflection lists it.
        (BACKEND_SERVICE, "Converse"),
    ],
)
async def test_a_service_no_backend_serves_is_unimplemented_but_only_for_a_known_caller(
    gateway: Gateway, probe: RunningProbe, service: str, method: str
) -> None:
    unknown = gateway.probe(method, service)
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await unknown(request(), timeout=TIMEOUT_S)
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as known:
        await unknown(request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert known.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert probe.probe.calls == []


async def test_a_method_scope_is_required(gateway: Gateway, probe: RunningProbe) -> None:
    secret = gateway.probe("Secret")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await secret(request(), metadata=gateway.auth("alice"), timeout=TIMEOUT_S)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert probe.probe.calls == []
    reply = await secret(
        request("ok"), metadata=gateway.auth("alice", "probe:secret"), timeout=TIMEOUT_S
    )
    assert reply.text == "ok"


async def test_each_call_counts_against_the_rate_limit(
    start_gateway: StartGateway, probe: RunningProbe, pki: Path
) -> None:
    gateway = await start_gateway(backend_config(pki, "probe", probe.port), rate_limit_max=2)
    echo = gateway.probe("Echo")
    for _ in range(2):
        await echo(request(), metadata=gateway.auth("carol"), timeout=TIMEOUT_S)
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await echo(request(), metadata=gateway.auth("carol"), timeout=TIMEOUT_S)
    assert limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry-after" in dict(limited.value.trailing_metadata() or ())
    assert len(probe.probe.calls) == 2
    # Another user has a window of their own.
    await echo(request(), metadata=gateway.auth("dave"), timeout=TIMEOUT_S)


async def test_the_drain_refuses_new_calls_and_ends_streams_when_it_closes(
    gateway: Gateway, probe: RunningProbe
) -> None:
    chat = gateway.probe("Chat")(metadata=gateway.auth(), timeout=TIMEOUT_S)
    await chat.write(request("before"))
    assert (await asyncio.wait_for(chat.read(), TIMEOUT_S)).text == "before"
    drain = gateway.service.drain
    drain.begin()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.probe("Echo")(request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    await drain.settle()
    assert drain.phase is Phase.CLOSING
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(chat.read(), TIMEOUT_S)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert probe.probe.calls == ["Probe/Chat"]


# --- the unary way: a method that reflection says is unary ------------------------------------


async def start_trailing_probe(pki: Path) -> RunningProbe:
    """A probe whose ``Echo`` also ends with the trailers ``x-probe-trailer-bin`` and
    ``x-probe-trailer`` (its other methods are the probe's own)."""
    probe = Probe("trailing", ProbeTypes.build())

    async def echo(request: Any, context: Any) -> Any:
        reply = await probe.echo(request, context)
        context.set_trailing_metadata(((TRAILER_BIN, TRAILER_BIN_VALUE), ("x-probe-trailer", "t")))
        return reply

    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=probe.types.Request.FromString,
        response_serializer=probe.types.Reply.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}), *probe.handlers())
    )
    health = probe_health.HealthServicer()
    reflection.enable_server_reflection((SERVICE,), server, pool=probe.types.pool)
    return await start_secure(server, health, probe, pki, cert="chat", port=0)


async def test_a_unary_answer_carries_the_backends_headers_and_trailers(
    start_gateway: StartGateway, pki: Path
) -> None:
    probe = await start_trailing_probe(pki)
    try:
        gateway = await start_gateway(backend_config(pki, "probe", probe.port))
        call = gateway.probe("Echo")(request("hi"), metadata=gateway.auth(), timeout=TIMEOUT_S)
        assert (await call).text == "hi"
        assert (SERVED_BY, "trailing") in tuple(await call.initial_metadata())
        trailers = tuple(await call.trailing_metadata())
        assert (TRAILER_BIN, TRAILER_BIN_VALUE) in trailers
        assert ("x-probe-trailer", "t") in trailers
        assert await call.code() is grpc.StatusCode.OK
    finally:
        await probe.stop()


async def test_an_error_answer_is_a_status_without_a_message(gateway: Gateway) -> None:
    """As the back-end sent it: its headers, then its status, no message before it (a
    client that reads the call as a stream would see one)."""
    raw = gateway.channel.stream_stream(f"/{SERVICE}/Fail")
    call = raw(
        iter([request("gone", code=grpc.StatusCode.NOT_FOUND.value[0]).SerializeToString()]),
        metadata=gateway.auth(),
        timeout=TIMEOUT_S,
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "gone"
    assert (SERVED_BY, "probe") in tuple(failed.value.initial_metadata())
    trailers = dict(failed.value.trailing_metadata() or ())
    assert trailers[TRAILER_BIN] == TRAILER_BIN_VALUE
    assert trailers["grpc-status-details-bin"] == STATUS_DETAILS


async def test_a_call_without_a_deadline_ends_at_the_backends_timeout(
    start_gateway: StartGateway, probe: RunningProbe, pki: Path
) -> None:
    backend = dataclasses.replace(backend_config(pki, "probe", probe.port), timeout_ms=300)
    gateway = await start_gateway(backend)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gateway.probe("Hold")(request(), metadata=gateway.auth())
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(probe.probe.cancelled.wait(), TIMEOUT_S)
    assert gateway.service.inflight == 0


async def test_a_call_ends_when_the_callers_token_expires(
    start_gateway: StartGateway, probe: RunningProbe, pki: Path
) -> None:
    gateway = await start_gateway(backend_config(pki, "probe", probe.port), jwt_leeway_s=0)
    token = mint_token(SECRET, "alice", now_s=time.time(), ttl_s=2)
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await gateway.probe("Hold")(
            request(), metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT_S
        )
    assert expired.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert expired.value.details() == "token expired"
    await asyncio.wait_for(probe.probe.cancelled.wait(), TIMEOUT_S)
    assert gateway.service.inflight == 0


async def test_the_drain_cancels_a_unary_call_still_waiting_at_its_work_deadline(
    start_gateway: StartGateway, probe: RunningProbe, pki: Path
) -> None:
    gateway = await start_gateway(backend_config(pki, "probe", probe.port), drain_timeout_s=1)
    before = sample("dialog_gateway_drain_cancelled_total")
    call = gateway.probe("Hold")(request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    await asyncio.wait_for(probe.probe.held.wait(), TIMEOUT_S)
    drain = gateway.service.drain
    drain.begin()
    settled = asyncio.create_task(drain.settle())  # waits for the call: work in flight
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await call
    assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
    assert cut.value.details() == UNFINISHED
    await asyncio.wait_for(probe.probe.cancelled.wait(), TIMEOUT_S)
    await asyncio.wait_for(settled, TIMEOUT_S)
    assert drain.phase is Phase.CLOSING
    assert sample("dialog_gateway_drain_cancelled_total") == before + 1


async def test_a_backend_that_answers_unavailable_opens_its_breaker(
    start_gateway: StartGateway, probe: RunningProbe, pki: Path
) -> None:
    gateway = await start_gateway(backend_config(pki, "probe", probe.port), breaker_failures=1)
    unavailable = request("overloaded", code=grpc.StatusCode.UNAVAILABLE.value[0])
    for method, message in (("Fail", unavailable), ("Echo", request())):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await gateway.probe(method)(message, metadata=gateway.auth(), timeout=TIMEOUT_S)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert probe.probe.calls == ["Probe/Fail"]  # the open breaker refused Echo


async def test_unary_calls_are_counted_with_the_backends_status(gateway: Gateway) -> None:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE}
    ok = {**labels, "grpc_method": "Echo", "grpc_code": "OK"}
    not_found = {**labels, "grpc_method": "Fail", "grpc_code": "NOT_FOUND"}
    before = [sample("grpc_server_handled_total", **c) for c in (ok, not_found)]
    await gateway.probe("Echo")(request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.probe("Fail")(request(code=5), metadata=gateway.auth(), timeout=TIMEOUT_S)
    after = [sample("grpc_server_handled_total", **c) for c in (ok, not_found)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]


# --- metrics -----------------------------------------------------------------------------------


async def test_calls_are_counted_with_grpc_ecosystem_metrics(gateway: Gateway) -> None:
    labels = {"grpc_service": SERVICE}
    ok = {**labels, "grpc_type": "server_stream", "grpc_method": "Count", "grpc_code": "OK"}
    denied = {**labels, "grpc_type": "unary", "grpc_method": "Secret"}
    before = (
        sample("grpc_server_started_total", **{k: v for k, v in ok.items() if k != "grpc_code"}),
        sample("grpc_server_handled_total", **ok),
        sample("grpc_server_handling_seconds_count", **denied),
        sample("grpc_server_handled_total", **denied, grpc_code="PERMISSION_DENIED"),
    )
    call = gateway.probe("Count")(request(count=1), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert [r.text async for r in call] == ["0"]
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.probe("Secret")(request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    after = (
        sample("grpc_server_started_total", **{k: v for k, v in ok.items() if k != "grpc_code"}),
        sample("grpc_server_handled_total", **ok),
        sample("grpc_server_handling_seconds_count", **denied),
        sample("grpc_server_handled_total", **denied, grpc_code="PERMISSION_DENIED"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]


# --- reflection --------------------------------------------------------------------------------


async def reflect(gateway: Gateway, *requests: Any, version: str = "v1alpha") -> list[Any]:
    """Answers of the gateway's reflection service to ``requests``, on one stream."""
    method = gateway.channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = method(iter(requests), metadata=gateway.auth(), timeout=TIMEOUT_S)
    return [response async for response in call]


def listed(response: Any) -> set[str]:
    return {s.name for s in response.list_services_response.service}


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
async def test_reflection_lists_and_describes_the_backends_services(
    gateway: Gateway, version: str
) -> None:
    Request = reflection_pb2.ServerReflectionRequest
    services, by_symbol, missing, extensions = await reflect(
        gateway,
        Request(list_services=""),
        Request(file_containing_symbol="probe.v1.Probe.Echo"),
        Request(file_by_filename="nowhere.proto"),
        Request(all_extension_numbers_of_type="probe.v1.ProbeRequest"),
        version=version,
    )
    assert listed(services) >= {
        "dialog.v1.Gateway",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        SERVICE,
    }
    assert BACKEND_SERVICE not in listed(services)
    files = by_symbol.file_descriptor_response.file_descriptor_proto
    assert [f for f in files if b"probe/v1/probe.proto" in f]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert list(extensions.all_extension_numbers_response.extension_number) == []


async def test_a_backend_that_serves_only_reflection_v1_is_learned_too(
    start_gateway: StartGateway, probes: Callable[..., Awaitable[RunningProbe]], pki: Path
) -> None:
    probe = await probes(reflection_v1_only=True)
    gateway = await start_gateway(backend_config(pki, "probe", probe.port))
    assert SERVICE in listed((await reflect(gateway, _list()))[0])
    reply = await gateway.probe("Echo")(request("v1"), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert reply.text == "v1"


async def test_a_reflection_client_builds_the_backends_types_through_the_gateway(
    gateway: Gateway,
) -> None:
    """grpcio-reflection's own client, given only the gateway, describes and then calls a
    back-end method with message classes built from what it learned."""
    token = gateway.token()

    def describe() -> descriptor_pool.DescriptorPool:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            authorized = grpc.intercept_channel(channel, _Authorization(token))
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(authorized))
            pool.FindServiceByName(SERVICE)
            return pool

    pool = await asyncio.to_thread(describe)
    echo = pool.FindServiceByName(SERVICE).methods_by_name["Echo"]
    request_class = message_factory.GetMessageClass(echo.input_type)
    reply_class = message_factory.GetMessageClass(echo.output_type)
    call = gateway.channel.unary_unary(
        f"/{SERVICE}/Echo",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    reply = await call(request_class(text="typed"), metadata=gateway.auth(), timeout=TIMEOUT_S)
    assert reply.text == "typed"


class _Authorization(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        metadata = [
            *(client_call_details.metadata or ()),
            ("authorization", f"Bearer {self._token}"),
        ]
        return continuation(client_call_details._replace(metadata=metadata), request_iterator)


async def test_reflection_needs_a_token(gateway: Gateway) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    request_stream = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    call = reflection.ServerReflectionInfo(request_stream, timeout=TIMEOUT_S)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [response async for response in call]
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Check ``predicate`` every few milliseconds until it holds, or fail at the deadline."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:  # until the predicate holds or the deadline cancels the wait
            if await predicate():
                return
            await asyncio.sleep(0.05)


async def test_reflection_is_read_again_when_the_backend_reconnects(
    start_gateway: StartGateway,
    probes: Callable[..., Awaitable[RunningProbe]],
    pki: Path,
) -> None:
    first = await probes()
    gateway = await start_gateway(backend_config(pki, "probe", first.port), follow=True)
    assert EXTRA_SERVICE not in listed((await reflect(gateway, _list()))[0])
    await first.stop()
    # The same back-end comes back with one more service; the refresh period (an hour
    # here) is not what makes the gateway learn it: the reconnect is.
    await probes(port=first.port, extra=True)

    async def echoes() -> bool:
        try:
            await gateway.probe("Echo")(request(), metadata=gateway.auth(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        return True

    async def lists_extra() -> bool:
        return EXTRA_SERVICE in listed((await reflect(gateway, _list()))[0])

    await until(echoes)  # the back-end answers again
    await until(lists_extra)
    reply = await gateway.probe("Ping", EXTRA_SERVICE)(
        request(), metadata=gateway.auth(), timeout=TIMEOUT_S
    )
    assert reply.text == "pong"


def _list() -> Any:
    return reflection_pb2.ServerReflectionRequest(list_services="")


async def test_a_backend_whose_services_conflict_is_not_merged(
    start_gateway: StartGateway,
    probes: Callable[..., Awaitable[RunningProbe]],
    pki: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    one, two = await probes("one"), await probes("two")
    with caplog.at_level(logging.WARNING, logger="gateway.grpc.reflection"):
        gateway = await start_gateway(
            backend_config(pki, "one", one.port), backend_config(pki, "two", two.port)
        )
    assert (
        "back-end 'two' is not merged into reflection: "
        f"service '{SERVICE}' belongs to back-end 'one'"
    ) in caplog.text
    call = gateway.probe("Echo")(request(), metadata=gateway.auth(), timeout=TIMEOUT_S)
    await call
    assert (SERVED_BY, "one") in tuple(await call.initial_metadata())
    assert two.probe.calls == []
