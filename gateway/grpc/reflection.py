"""Aggregated server reflection: the gateway's own services and every routed back-end's.

``BackendReflection`` reads each back-end's own server reflection over its mutual-TLS channel
(``grpc.reflection.v1alpha``, then ``grpc.reflection.v1`` for a back-end that serves only
that) at start, every ``REFLECTION_REFRESH_MS`` and whenever the back-end's channel is ready
again after it was not (a reconnect), and merges what it learned into one ``Catalog``
(``gateway.grpc.descriptors``: the pure merge, conflicts included). A back-end whose
reflection cannot be read keeps what was last learned from it.

``ReflectionServicer`` answers ``ServerReflectionInfo`` from that catalog, under both
``grpc.reflection.v1alpha.ServerReflection`` and ``grpc.reflection.v1.ServerReflection`` (their
messages are the same on the wire); like the reflection it replaces, it is behind the token
check of ``gateway.grpc.interceptors.AuthenticatedReflection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2  # noqa: F401 (its file joins the default pool)
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dialog.v1 import gateway_pb2  # noqa: F401 (its file joins the default pool)
from gateway.config import GATEWAY_SERVICES, RoutesConfig, is_reserved_service
from gateway.grpc.descriptors import GATEWAY, Catalog, DescriptorSet, ProtoFile, merge

log = logging.getLogger(__name__)

V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
METHOD = "ServerReflectionInfo"
# A back-end's descriptor set is bounded: files beyond this are not fetched.
MAX_FILES = 1000

# grpcio-reflection has no type information: its messages are ``Any`` to the type checker.
Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse


class ReflectionFailed(Exception):
    """A back-end's reflection could not be read; the message says why (safe to log)."""


def own_descriptors(services: Sequence[str] = GATEWAY_SERVICES) -> DescriptorSet:
    """The gateway's own services and the files that describe them (the default pool)."""
    pool = descriptor_pool.Default()
    files: dict[str, bytes] = {}

    def add(file: FileDescriptor) -> None:
        if file.name in files:
            return
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files[file.name] = proto.SerializeToString()
        for dependency in file.dependencies:
            add(dependency)

    for service in services:
        add(pool.FindServiceByName(service).file)
    return DescriptorSet(GATEWAY, tuple(services), tuple(files.values()))


async def fetch_descriptors(
    channel: grpc.aio.Channel, backend: str, *, timeout_s: float
) -> DescriptorSet:
    """What ``backend`` serves (but the reserved services) and the files that describe it,
    read from its server reflection within ``timeout_s``; raises ``ReflectionFailed``."""
    unimplemented: grpc.aio.AioRpcError | None = None
    try:
        async with asyncio.timeout(timeout_s):
            for service in (V1ALPHA_SERVICE, V1_SERVICE):
                try:
                    return await _fetch(channel, f"/{service}/{METHOD}", backend)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                        raise ReflectionFailed(f"{exc.code().name}: {exc.details()}") from exc
                    unimplemented = exc
    except TimeoutError as exc:
        raise ReflectionFailed(f"no answer within {timeout_s:g} s") from exc
    raise ReflectionFailed("the back-end serves no server reflection") from unimplemented


async def _fetch(channel: grpc.aio.Channel, method: str, backend: str) -> DescriptorSet:
    call = channel.stream_stream(
        method,
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )(None)
    try:
        listed = await _ask(call, Request(list_services=""))
        names = [s.name for s in listed.list_services_response.service]
        services = tuple(name for name in names if not is_reserved_service(name))
        files: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        for service in services:
            _collect(files, await _ask(call, Request(file_containing_symbol=service)))
        asked: set[str] = set()
        while missing := _missing(files) - asked:
            for name in sorted(missing):
                if len(files) >= MAX_FILES:
                    raise ReflectionFailed(f"more than {MAX_FILES} files")
                asked.add(name)
                _collect(files, await _ask(call, Request(file_by_filename=name)))
        await call.done_writing()
    finally:
        call.cancel()
    return DescriptorSet(backend, services, tuple(serialized for serialized, _ in files.values()))


async def _ask(call: Any, request: Any) -> Any:
    """Send one request on the reflection stream and read its answer."""
    await call.write(request)
    response = await call.read()
    if response is grpc.aio.EOF:  # type: ignore[attr-defined]
        raise ReflectionFailed("the reflection stream ended early")
    if not isinstance(response, Response):
        raise ReflectionFailed("unexpected reflection answer")
    return response


def _collect(files: dict[str, tuple[bytes, tuple[str, ...]]], response: Any) -> None:
    """Add the files of a ``file_descriptor_response`` (an ``error_response`` adds none)."""
    for serialized in response.file_descriptor_response.file_descriptor_proto:
        try:
            proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        except DecodeError as exc:
            raise ReflectionFailed("a file descriptor is malformed") from exc
        files.setdefault(proto.name, (serialized, tuple(proto.dependency)))


def _missing(files: Mapping[str, tuple[bytes, tuple[str, ...]]]) -> set[str]:
    return {dep for _, deps in files.values() for dep in deps if dep not in files}


async def _reconnected(channel: grpc.aio.Channel) -> None:
    """Return once ``channel`` is READY after having been in another state."""
    ready = grpc.ChannelConnectivity.READY
    state = channel.get_state()
    away = state is not ready
    while True:
        await channel.wait_for_state_change(state)
        state = channel.get_state()
        if state is ready and away:
            return
        away = away or state is not ready


class BackendReflection:
    """The merged ``Catalog`` of the public gRPC port, kept up to date (see the module
    docstring). ``catalog`` is always the latest merge; ``run`` keeps it so."""

    def __init__(
        self,
        channels: Mapping[str, grpc.aio.Channel],
        routes: RoutesConfig,
        *,
        refresh_s: float,
        timeout_s: float,
    ):
        self._channels = channels
        self._order = [b.name for b in routes.backends]
        self._configured = {s: b.name for b in routes.backends for s in b.services}
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._own = own_descriptors()
        self._learned: dict[str, DescriptorSet] = {}
        self._failures: dict[str, str] = {}
        self.catalog: Catalog = merge(self._own, (), self._configured)

    def follow(self, routes: RoutesConfig) -> None:
        """Follow the back-ends of ``routes`` from now on (a configuration reload): what was
        learned from a removed one leaves the catalog at once. Call it while ``run`` is not
        running."""
        self._order = [b.name for b in routes.backends]
        self._configured = {s: b.name for b in routes.backends for s in b.services}
        self._learned = {n: d for n, d in self._learned.items() if n in self._order}
        self._failures = {n: f for n, f in self._failures.items() if n in self._order}
        self._merge()

    async def run(self) -> None:
        """Follow every back-end until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for name in self._order:
                tasks.create_task(self._follow(name), name=f"reflection:{name}")

    async def _follow(self, backend: str) -> None:
        channel = self._channels[backend]
        while True:
            try:
                await self.refresh(backend)
            except Exception:
                log.exception("reading the reflection of back-end %r failed", backend)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_s):
                    await _reconnected(channel)

    async def refresh(self, backend: str) -> None:
        """Read ``backend``'s reflection again and merge what changed; on failure keep
        what was learned before (each new failure is logged once)."""
        try:
            learned = await fetch_descriptors(
                self._channels[backend], backend, timeout_s=self._timeout_s
            )
        except ReflectionFailed as exc:
            if self._failures.get(backend) != str(exc):
                log.warning("cannot read the reflection of back-end %r: %s", backend, exc)
            self._failures[backend] = str(exc)
            return
        if self._failures.pop(backend, None) is not None:
            log.info("the reflection of back-end %r is readable again", backend)
        if self._learned.get(backend) != learned:
            self._learned[backend] = learned
            log.info(
                "the reflection of back-end %r lists %s (%d files)",
                backend,
                ", ".join(learned.services) or "no service to proxy",
                len(learned.files),
            )
            self._merge()

    def _merge(self) -> None:
        before = self.catalog
        learned = [self._learned[name] for name in self._order if name in self._learned]
        self.catalog = merge(self._own, learned, self._configured)
        for conflict in set(self.catalog.conflicts) - set(before.conflicts):
            log.warning("%s", conflict)


class ReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]
    """``ServerReflectionInfo`` answered from the catalog ``catalog()`` returns."""

    def __init__(self, catalog: Callable[[], Catalog]):
        self._catalog = catalog

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        sent: set[str] = set()  # files sent on this stream: dependencies are sent once
        async for request in requests:
            yield answer(self._catalog(), request, sent)


def answer(catalog: Catalog, request: Any, sent: set[str]) -> Any:
    """The answer to one reflection request; adds the files it sends to ``sent``."""
    kind = request.WhichOneof("message_request")
    files: list[ProtoFile] = []
    already = frozenset(sent)
    if kind == "list_services":
        services = [reflection_pb2.ServiceResponse(name=s) for s in catalog.services]
        return Response(
            list_services_response=reflection_pb2.ListServiceResponse(service=services),
            original_request=request,
        )
    if kind == "all_extension_numbers_of_type":
        numbers = catalog.extension_numbers(request.all_extension_numbers_of_type)
        if numbers is None:
            return _error(request, grpc.StatusCode.NOT_FOUND)
        return Response(
            all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                base_type_name=request.all_extension_numbers_of_type, extension_number=numbers
            ),
            original_request=request,
        )
    if kind == "file_by_filename":
        files = catalog.file_by_filename(request.file_by_filename, already)
    elif kind == "file_containing_symbol":
        files = catalog.file_containing_symbol(request.file_containing_symbol, already)
    elif kind == "file_containing_extension":
        extension = request.file_containing_extension
        files = catalog.file_containing_extension(
            extension.containing_type, extension.extension_number, already
        )
    else:
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT)
    if not files:
        return _error(request, grpc.StatusCode.NOT_FOUND)
    sent.update(f.name for f in files)
    return Response(
        file_descriptor_response=reflection_pb2.FileDescriptorResponse(
            file_descriptor_proto=[f.serialized for f in files]
        ),
        original_request=request,
    )


def _error(request: Any, code: grpc.StatusCode) -> Any:
    number, text = code.value
    return Response(
        error_response=reflection_pb2.ErrorResponse(error_code=number, error_message=text),
        original_request=request,
    )


def add_reflection(servicer: ReflectionServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` under both reflection versions."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=Request.FromString,
        response_serializer=Response.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {METHOD: v1}),)
    )
