"""A test-only back-end with a typed gRPC service, ``probe.v1.Probe``, for the proxy tests.

It is a real ``grpc.aio`` server behind mutual TLS (the mesh CA, like the adapters) with
health and server reflection (grpcio-reflection, v1alpha). Its file, ``probe/v1/probe.proto``,
is built here as a ``FileDescriptorProto`` (no .proto file, no generated code) in a pool of
its own; the message classes come from that pool. Each method says what it saw:

- ``Echo`` (unary): the request's text, every metadata entry it received and the time its
  call had left (``timeout_s``, 0 without a deadline);
- ``Count`` (server stream): ``count`` replies "0", "1", …;
- ``Collect`` (client stream): the texts of every request, joined with spaces;
- ``Chat`` (bidi): one reply per request, with its text;
- ``Fail`` (unary): ends with the status ``code`` and the details ``text``, with the trailers
  ``x-probe-trailer-bin`` and ``grpc-status-details-bin``;
- ``Hold`` (unary): waits until the call is cancelled (``held`` is set on entry,
  ``cancelled`` on cancellation);
- ``Secret`` (unary): like ``Echo`` (the tests give it a scope).

Every call starts with the response header ``x-probe-served-by: <name>``. With
``extra=True`` the file also has the service ``probe.v1.Extra`` (``Ping``, unary). Like the
reference adapters, it also serves (and its reflection lists) the back-end contract
``dialog.backend.v1.Backend``, whose ``Converse`` only records that it was called: the
gateway must never relay a client's call to it.

Run as a process (``python -m tests.support.probe``), it serves on ``PROBE_PORT`` with the
certificate ``PROBE_CERT`` (default ``chat``) of the development PKI in ``PROBE_PKI`` until
SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from dialog.backend.v1 import backend_pb2

FILE_NAME = "probe/v1/probe.proto"
PACKAGE = "probe.v1"
SERVICE = "probe.v1.Probe"
EXTRA_SERVICE = "probe.v1.Extra"
BACKEND_SERVICE = "dialog.backend.v1.Backend"
SERVED_BY = "x-probe-served-by"
TRAILER_BIN = "x-probe-trailer-bin"
TRAILER_BIN_VALUE = b"\x00\xffprobe\x01"
# google.rpc.Status{code: 5, message: "gone"}, as rich error details carry it.
STATUS_DETAILS = b"\x08\x05\x12\x04gone"

_FIELD = descriptor_pb2.FieldDescriptorProto
# (service, method, request, response, client streaming, server streaming)
METHODS = (
    ("Probe", "Echo", "ProbeRequest", "ProbeReply", False, False),
    ("Probe", "Count", "ProbeRequest", "ProbeReply", False, True),
    ("Probe", "Collect", "ProbeRequest", "ProbeReply", True, False),
    ("Probe", "Chat", "ProbeRequest", "ProbeReply", True, True),
    ("Probe", "Fail", "ProbeRequest", "ProbeReply", False, False),
    ("Probe", "Hold", "ProbeRequest", "ProbeReply", False, False),
    ("Probe", "Secret", "ProbeRequest", "ProbeReply", False, False),
)
EXTRA_METHODS = (("Extra", "Ping", "ProbeRequest", "ProbeReply", False, False),)


def probe_file(*, extra: bool = False) -> descriptor_pb2.FileDescriptorProto:
    """``probe/v1/probe.proto``, with the service ``Extra`` when ``extra``."""
    proto = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    request = proto.message_type.add(name="ProbeRequest")
    request.field.add(name="text", number=1, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
    request.field.add(name="count", number=2, type=_FIELD.TYPE_INT32, label=_FIELD.LABEL_OPTIONAL)
    request.field.add(name="code", number=3, type=_FIELD.TYPE_INT32, label=_FIELD.LABEL_OPTIONAL)
    header = proto.message_type.add(name="Header")
    header.field.add(name="key", number=1, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
    header.field.add(name="value", number=2, type=_FIELD.TYPE_BYTES, label=_FIELD.LABEL_OPTIONAL)
    reply = proto.message_type.add(name="ProbeReply")
    reply.field.add(name="text", number=1, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
    reply.field.add(
        name="headers",
        number=2,
        type=_FIELD.TYPE_MESSAGE,
        type_name=f".{PACKAGE}.Header",
        label=_FIELD.LABEL_REPEATED,
    )
    reply.field.add(
        name="timeout_s", number=3, type=_FIELD.TYPE_DOUBLE, label=_FIELD.LABEL_OPTIONAL
    )
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
    for service, method, request_type, response_type, client_stream, server_stream in (
        *METHODS,
        *(EXTRA_METHODS if extra else ()),
    ):
        if service not in services:
            services[service] = proto.service.add(name=service)
        services[service].method.add(
            name=method,
            input_type=f".{PACKAGE}.{request_type}",
            output_type=f".{PACKAGE}.{response_type}",
            client_streaming=client_stream,
            server_streaming=server_stream,
        )
    return proto


@dataclass
class ProbeTypes:
    """The message classes of one ``probe_file``, from a pool of their own."""

    pool: descriptor_pool.DescriptorPool
    Request: Any
    Reply: Any

    @classmethod
    def build(cls, *, extra: bool = False) -> ProbeTypes:
        pool = descriptor_pool.DescriptorPool()
        pool.Add(probe_file(extra=extra))
        request = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("probe.v1.ProbeRequest")
        )
        reply = message_factory.GetMessageClass(pool.FindMessageTypeByName("probe.v1.ProbeReply"))
        return cls(pool, request, reply)


@dataclass
class Probe:
    """The back-end's behaviour, and what it saw."""

    name: str
    types: ProbeTypes
    calls: list[str] = field(default_factory=list)  # "Service/Method", in order
    held: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    hold_timeout_s: float | None = None

    def _reply(self, text: str, context: Any) -> Any:
        reply = self.types.Reply(text=text, timeout_s=context.time_remaining() or 0.0)
        for key, value in context.invocation_metadata():
            raw = value if isinstance(value, bytes) else value.encode()
            reply.headers.add(key=key, value=raw)
        return reply

    async def _start(self, method: str, context: Any) -> None:
        self.calls.append(method)
        await context.send_initial_metadata(((SERVED_BY, self.name),))

    async def echo(self, request: Any, context: Any) -> Any:
        await self._start("Probe/Echo", context)
        return self._reply(request.text, context)

    async def secret(self, request: Any, context: Any) -> Any:
        await self._start("Probe/Secret", context)
        return self._reply(request.text, context)

    async def ping(self, request: Any, context: Any) -> Any:
        await self._start("Extra/Ping", context)
        return self._reply("pong", context)

    async def count(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._start("Probe/Count", context)
        for i in range(request.count):
            yield self.types.Reply(text=str(i))

    async def collect(self, requests: AsyncIterator[Any], context: Any) -> Any:
        await self._start("Probe/Collect", context)
        texts = [request.text async for request in requests]
        return self.types.Reply(text=" ".join(texts))

    async def chat(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        await self._start("Probe/Chat", context)
        async for request in requests:
            yield self.types.Reply(text=request.text)

    async def fail(self, request: Any, context: Any) -> Any:
        await self._start("Probe/Fail", context)
        await context.abort(
            grpc.StatusCode(_status(request.code)),
            request.text,
            ((TRAILER_BIN, TRAILER_BIN_VALUE), ("grpc-status-details-bin", STATUS_DETAILS)),
        )

    async def converse(self, requests: AsyncIterator[bytes], context: Any) -> None:
        await self._start("Backend/Converse", context)

    async def hold(self, request: Any, context: Any) -> Any:
        await self._start("Probe/Hold", context)
        self.hold_timeout_s = context.time_remaining()
        self.held.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    def handlers(self, *, extra: bool = False) -> list[grpc.GenericRpcHandler]:
        """The generic handlers of ``probe.v1.Probe`` (and ``Extra``)."""
        request, reply = self.types.Request, self.types.Reply
        kinds: dict[tuple[bool, bool], Callable[..., Any]] = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        behaviours = {
            "Echo": self.echo,
            "Count": self.count,
            "Collect": self.collect,
            "Chat": self.chat,
            "Fail": self.fail,
            "Hold": self.hold,
            "Secret": self.secret,
            "Ping": self.ping,
        }
        by_service: dict[str, dict[str, Any]] = {}
        for service, method, _, _, client_stream, server_stream in (
            *METHODS,
            *(EXTRA_METHODS if extra else ()),
        ):
            by_service.setdefault(f"{PACKAGE}.{service}", {})[method] = kinds[
                (client_stream, server_stream)
            ](
                behaviours[method],
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )
        by_service[BACKEND_SERVICE] = {
            "Converse": grpc.stream_stream_rpc_method_handler(self.converse)
        }
        return [grpc.method_handlers_generic_handler(s, m) for s, m in by_service.items()]


def _status(code: int) -> tuple[int, str]:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.value  # type: ignore[no-any-return]
    return grpc.StatusCode.UNKNOWN.value  # type: ignore[no-any-return]


@dataclass
class RunningProbe:
    probe: Probe
    server: grpc.aio.Server
    port: int

    async def stop(self) -> None:
        await self.server.stop(None)


async def start_probe(
    pki: Path,
    *,
    name: str = "probe",
    cert: str = "chat",
    port: int = 0,
    extra: bool = False,
    reflection_v1_only: bool = False,
) -> RunningProbe:
    """Serve a probe on 127.0.0.1:``port`` with the server certificate ``cert`` of ``pki``;
    its reflection is v1alpha (grpcio-reflection's), or only v1 with ``reflection_v1_only``
    (the same servicer: the two versions' messages are the same on the wire)."""
    types = ProbeTypes.build(extra=extra)
    probe = Probe(name, types)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(probe.handlers(extra=extra))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    services = [SERVICE, *([EXTRA_SERVICE] if extra else []), BACKEND_SERVICE]
    names = (*services, "grpc.health.v1.Health", reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names, pool=_with_own_services(types.pool))
    if reflection_v1_only:
        info = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "grpc.reflection.v1.ServerReflection", {"ServerReflectionInfo": info}
                ),
            )
        )
    else:
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    return await start_secure(server, health, probe, pki, cert=cert, port=port)


async def start_secure(
    server: grpc.aio.Server,
    health: health_aio.HealthServicer,
    probe: Probe,
    pki: Path,
    *,
    cert: str,
    port: int,
) -> RunningProbe:
    """Serve ``server`` on 127.0.0.1:``port`` with mutual TLS (the server certificate
    ``cert`` of ``pki``), healthy, and started."""
    credentials = grpc.ssl_server_credentials(
        [((pki / f"{cert}-key.pem").read_bytes(), (pki / f"{cert}.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    return RunningProbe(probe, server, bound)


def _with_own_services(pool: descriptor_pool.DescriptorPool) -> descriptor_pool.DescriptorPool:
    """``pool`` plus the files of the other services it lists (back-end contract, health,
    reflection), with their dependencies."""

    def add(file: FileDescriptor) -> None:
        try:
            pool.FindFileByName(file.name)
            return
        except KeyError:
            pass
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)

    for module in (backend_pb2, health_pb2, reflection_pb2):
        add(module.DESCRIPTOR)
    return pool


async def serve_until_stopped(start: Callable[..., Awaitable[RunningProbe]]) -> None:
    """Run a probe as a process: ``start`` it as PROBE_PKI, PROBE_CERT and PROBE_PORT say,
    until SIGTERM or SIGINT."""
    env = os.environ
    running = await start(
        Path(env["PROBE_PKI"]), cert=env.get("PROBE_CERT", "chat"), port=int(env["PROBE_PORT"])
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.stop()


if __name__ == "__main__":
    asyncio.run(serve_until_stopped(start_probe))
