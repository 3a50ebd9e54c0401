"""The merged descriptor pool of the public gRPC port (pure: no I/O).

The gateway's server reflection describes its own services and every routed back-end's, so
that ``grpcurl`` or ``buf curl`` given only the gateway's address can describe and call a
back-end method. ``merge`` builds that pool, as a ``Catalog``, from the gateway's own
``DescriptorSet`` and one per back-end (learned from the back-end's own reflection by
``gateway.grpc.reflection``):

- the gateway's own files come first, then each back-end's, in the order given (the order of
  ``routes.json``);
- a file that two sources share must be the same file (its source info aside), and a symbol
  (message, enum, enum value, field, service, method, extension) is defined by one file only;
- a service belongs to one back-end: the one ``routes.json`` names it under, else the one
  whose reflection lists it. The gateway's own services, the back-end contract and gRPC's
  own services are never a back-end's (``gateway.config.is_reserved_service``).

A back-end that breaks one of these rules is not merged at all (neither its files nor the
services it lists), and ``Catalog.conflicts`` says why; the services ``routes.json`` gives it
are still routed to it. The ``Catalog`` then answers the reflection requests
(``file_by_filename``, ``file_containing_symbol``, ``file_containing_extension``,
``all_extension_numbers_of_type``) and tells the proxy which back-end serves a service and
what kind of call a method is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from gateway.config import is_reserved_service

GATEWAY = "the gateway"


class CallKind(enum.StrEnum):
    """The four kinds of gRPC call; the values are grpc-ecosystem's ``grpc_type`` labels."""

    UNARY = "unary"
    CLIENT_STREAM = "client_stream"
    SERVER_STREAM = "server_stream"
    BIDI_STREAM = "bidi_stream"

    @classmethod
    def of(cls, client_streaming: bool, server_streaming: bool) -> CallKind:
        if client_streaming:
            return cls.BIDI_STREAM if server_streaming else cls.CLIENT_STREAM
        return cls.SERVER_STREAM if server_streaming else cls.UNARY


@dataclass(frozen=True)
class DescriptorSet:
    """What one source serves: its services and the serialized ``FileDescriptorProto`` of
    every file they need. ``source`` is a back-end name, or ``GATEWAY``."""

    source: str
    services: tuple[str, ...]
    files: tuple[bytes, ...]


@dataclass(frozen=True)
class Conflict:
    """A back-end that was not merged, and why."""

    backend: str
    reason: str

    def __str__(self) -> str:
        return f"back-end {self.backend!r} is not merged into reflection: {self.reason}"


@dataclass(frozen=True)
class ProtoFile:
    """One file of the pool: its serialized ``FileDescriptorProto``, the names of the files
    it imports, and the source it came from."""

    name: str
    serialized: bytes
    dependencies: tuple[str, ...]
    owner: str


@dataclass(frozen=True)
class Catalog:
    """The merged pool: which back-end serves which service, and the files that describe
    every service. Built by ``merge``; read-only."""

    services: tuple[str, ...] = ()  # what reflection lists: described services only
    routes: Mapping[str, str] = field(default_factory=dict)  # service → back-end
    methods: Mapping[str, CallKind] = field(default_factory=dict)  # "pkg.Service/Method"
    conflicts: tuple[Conflict, ...] = ()
    files: Mapping[str, ProtoFile] = field(default_factory=dict)
    symbols: Mapping[str, str] = field(default_factory=dict)  # full name → file name
    extensions: Mapping[str, Mapping[int, str]] = field(default_factory=dict)

    def backend_of(self, service: str) -> str | None:
        """The back-end that serves ``service``, or None."""
        return self.routes.get(service)

    def kind_of(self, service: str, method: str) -> CallKind | None:
        """The kind of ``service``/``method`` when a merged file describes it, else None."""
        return self.methods.get(f"{service}/{method}")

    def file_by_filename(self, name: str, sent: frozenset[str] = frozenset()) -> list[ProtoFile]:
        """The file ``name`` and the files it depends on, transitively, but those in
        ``sent`` (already sent on this reflection stream); empty when it is unknown."""
        if name not in self.files:
            return []
        found: list[ProtoFile] = []
        queue, seen = [name], {name}
        while queue:
            current = self.files.get(queue.pop(0))
            if current is None:
                continue
            if not found or current.name not in sent:
                found.append(current)
            for dep in current.dependencies:
                if dep not in seen:
                    seen.add(dep)
                    queue.append(dep)
        return found

    def file_containing_symbol(
        self, symbol: str, sent: frozenset[str] = frozenset()
    ) -> list[ProtoFile]:
        """The file that defines ``symbol`` (a full name, without a leading dot), with its
        dependencies as in ``file_by_filename``; empty when it is unknown."""
        name = self.symbols.get(symbol)
        return [] if name is None else self.file_by_filename(name, sent)

    def file_containing_extension(
        self, containing_type: str, number: int, sent: frozenset[str] = frozenset()
    ) -> list[ProtoFile]:
        """The file that defines extension ``number`` of ``containing_type``."""
        name = self.extensions.get(containing_type, {}).get(number)
        return [] if name is None else self.file_by_filename(name, sent)

    def extension_numbers(self, containing_type: str) -> tuple[int, ...] | None:
        """Every extension number of the message ``containing_type`` (sorted), or None
        when no merged file defines that message."""
        if self.symbols.get(containing_type) is None:
            return None
        return tuple(sorted(self.extensions.get(containing_type, {})))


class _Pool:
    """The files, symbols and extensions merged so far."""

    def __init__(self) -> None:
        self.files: dict[str, ProtoFile] = {}
        self.parsed: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self.symbols: dict[str, str] = {}
        self.extensions: dict[str, dict[int, str]] = {}

    def clashes(self, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> str | None:
        """Why ``files`` cannot join the pool, or None."""
        defined: dict[str, str] = {}
        for proto in files:
            known = self.parsed.get(proto.name)
            if known is not None:
                if _comparable(known) != _comparable(proto):
                    owner = _source(self.files[proto.name].owner)
                    return f"file {proto.name!r} differs from the one merged from {owner}"
                continue
            for symbol in _symbols(proto):
                other = self.symbols.get(symbol) or defined.get(symbol)
                if other is not None and other != proto.name:
                    return f"symbol {symbol!r} is also defined in {other!r}"
                defined[symbol] = proto.name
        return None

    def add(self, proto: descriptor_pb2.FileDescriptorProto, serialized: bytes, owner: str) -> None:
        if proto.name in self.files:
            return
        self.files[proto.name] = ProtoFile(proto.name, serialized, tuple(proto.dependency), owner)
        self.parsed[proto.name] = proto
        for symbol in _symbols(proto):
            self.symbols[symbol] = proto.name
        for extendee, number in _extensions(proto):
            self.extensions.setdefault(extendee, {})[number] = proto.name

    def has_service(self, service: str) -> bool:
        return service in self.symbols


def merge(
    own: DescriptorSet,
    backends: Sequence[DescriptorSet],
    configured: Mapping[str, str] | None = None,
) -> Catalog:
    """The pool of ``own`` (the gateway's), then of each of ``backends`` in order;
    ``configured`` maps the services ``routes.json`` gives to a back-end to its name."""
    pool = _Pool()
    for serialized, proto in _parsed(own.files) or ():
        pool.add(proto, serialized, GATEWAY)
    routes = dict(configured or {})
    conflicts: list[Conflict] = []
    for backend in backends:
        files = _parsed(backend.files)
        if files is None:
            conflicts.append(Conflict(backend.source, "a file descriptor is malformed"))
            continue
        reason = _service_clash(backend, routes, own.services) or pool.clashes(
            [proto for _, proto in files]
        )
        if reason is not None:
            conflicts.append(Conflict(backend.source, reason))
            continue
        for serialized, proto in files:
            pool.add(proto, serialized, backend.source)
        for service in backend.services:
            if not is_reserved_service(service):
                routes[service] = backend.source
    listed = [s for s in own.services if pool.has_service(s)]
    listed += sorted(s for s in routes if pool.has_service(s) and s not in listed)
    return Catalog(
        services=tuple(listed),
        routes=routes,
        methods=_method_kinds(pool.parsed.values(), routes),
        conflicts=tuple(conflicts),
        files=pool.files,
        symbols=pool.symbols,
        extensions=pool.extensions,
    )


def _service_clash(
    backend: DescriptorSet, routes: Mapping[str, str], own_services: Sequence[str]
) -> str | None:
    for service in backend.services:
        if is_reserved_service(service):
            continue
        if service in own_services:
            return f"service {service!r} is {GATEWAY}'s own"
        owner = routes.get(service)
        if owner is not None and owner != backend.source:
            return f"service {service!r} belongs to back-end {owner!r}"
    return None


def _parsed(
    files: Sequence[bytes],
) -> list[tuple[bytes, descriptor_pb2.FileDescriptorProto]] | None:
    """Each serialized file with its parsed form; None when one is malformed."""
    parsed = []
    for serialized in files:
        try:
            proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        except DecodeError:
            return None
        if not proto.name:
            return None
        parsed.append((serialized, proto))
    return parsed


def _comparable(proto: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The file without its source info (comments and spans), which reflection may omit."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    copy.ClearField("source_code_info")
    return copy


def _source(name: str) -> str:
    return GATEWAY if name == GATEWAY else f"back-end {name!r}"


def _symbols(proto: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    """Every full name the file defines (enum values are scoped like their enum, as in
    protobuf's own pools)."""
    prefix = f"{proto.package}." if proto.package else ""
    for message in proto.message_type:
        yield from _message_symbols(prefix, message)
    for enum_type in proto.enum_type:
        yield from _enum_symbols(prefix, enum_type)
    for extension in proto.extension:
        yield prefix + extension.name
    for service in proto.service:
        yield prefix + service.name
        for method in service.method:
            yield f"{prefix}{service.name}.{method.name}"


def _message_symbols(prefix: str, message: descriptor_pb2.DescriptorProto) -> Iterator[str]:
    name = prefix + message.name
    yield name
    for field_or_extension in (*message.field, *message.extension):
        yield f"{name}.{field_or_extension.name}"
    for oneof in message.oneof_decl:
        yield f"{name}.{oneof.name}"
    for nested in message.nested_type:
        yield from _message_symbols(f"{name}.", nested)
    for enum_type in message.enum_type:
        yield from _enum_symbols(f"{name}.", enum_type)


def _enum_symbols(prefix: str, enum_type: descriptor_pb2.EnumDescriptorProto) -> Iterator[str]:
    yield prefix + enum_type.name
    for value in enum_type.value:
        yield prefix + value.name


def _extensions(proto: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, int]]:
    """(extended message, field number) of every extension the file defines."""

    def nested(
        message: descriptor_pb2.DescriptorProto,
    ) -> Iterator[descriptor_pb2.FieldDescriptorProto]:
        yield from message.extension
        for inner in message.nested_type:
            yield from nested(inner)

    fields = [*proto.extension]
    for message in proto.message_type:
        fields.extend(nested(message))
    for extension in fields:
        yield extension.extendee.lstrip("."), extension.number


def _method_kinds(
    files: Iterable[descriptor_pb2.FileDescriptorProto], routes: Mapping[str, str]
) -> dict[str, CallKind]:
    """The kind of every method of the routed services, by "pkg.Service/Method"."""
    kinds: dict[str, CallKind] = {}
    for proto in files:
        prefix = f"{proto.package}." if proto.package else ""
        for service in proto.service:
            if prefix + service.name not in routes:
                continue
            for method in service.method:
                kind = CallKind.of(method.client_streaming, method.server_streaming)
                kinds[f"{prefix}{service.name}/{method.name}"] = kind
    return kinds
