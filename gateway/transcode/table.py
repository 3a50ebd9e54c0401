"""Every HTTP route of the routed back-end services, compiled from a ``Catalog`` (pure).

``compile_table`` builds a descriptor pool from the catalog's files (the ones the back-ends'
reflection described) and offers each method of each routed service:

- at the paths of its ``google.api.http`` rules (``gateway.transcode.rules``);
- at its RPC path, ``POST /<package.Service>/<Method>``, with the whole request as the
  JSON body (Connect-style), whether it has rules or not.

Unary and server-streaming methods are offered; client-streaming and bidirectional ones
are not (HTTP/1.1 request bodies are not streams of messages): their RPC path says so.

``TranscodingTable.match`` finds the route of one request. Templates are tried in
precedence order (``PathTemplate.rank``; at equal rank, a named HTTP method before a rule's
``*``, then the full service name and declaration order); the first whose template matches
the path and whose method is the request's wins. A rule whose method and template repeat
an earlier one is left out (a problem says so). The gateway's own paths (``reserved``)
never match. A path of the RPC shape (``/pkg.Service/Method``) is an ``RpcPath``, resolved
only after authentication (``TranscodingTable.rpc``), so that which services exist stays
private, as on the gRPC port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool

from gateway.errors import NoRoute, NotFound
from gateway.grpc.descriptors import CallKind, Catalog, ProtoFile
from gateway.transcode.rules import ANY_METHOD, WHOLE, HttpBinding, method_rules
from gateway.transcode.template import Bindings, PathTemplate

RPC_METHOD = "POST"
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
RPC_PATH = re.compile(rf"/({IDENT}(?:\.{IDENT})+)/({IDENT})")
STREAMING = {CallKind.CLIENT_STREAM: "client-streaming", CallKind.BIDI_STREAM: "bidirectional"}


@dataclass(frozen=True)
class Endpoint:
    """One way to call one method over HTTP: a rule's binding, or the RPC path
    (``template`` None)."""

    service: str
    method: str
    backend: str
    kind: CallKind
    request_type: Descriptor
    response_type: Descriptor
    http_method: str
    template: PathTemplate | None
    body: str
    response_body: str = ""
    order: int = 0  # declaration order across the table

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.method}"

    @property
    def route(self) -> str:
        """The route's name for spans and metrics: the template, or the RPC path."""
        return self.template.text if self.template is not None else self.grpc_path

    @property
    def streaming(self) -> bool:
        return self.kind is CallKind.SERVER_STREAM


@dataclass(frozen=True)
class Matched:
    """The route of a request, and the values its path binds."""

    endpoint: Endpoint
    bindings: Bindings = ()


@dataclass(frozen=True)
class WrongMethod:
    """The path is a route, but not for the request's method (405)."""

    allowed: tuple[str, ...]


@dataclass(frozen=True)
class RpcPath:
    """A path of the RPC shape, resolved after authentication."""

    path: str


@dataclass(frozen=True)
class TranscodingTable:
    """The compiled routes of one catalog. Built by ``compile_table``; read-only."""

    pool: DescriptorPool = field(default_factory=DescriptorPool)
    routes: tuple[Endpoint, ...] = ()  # the rules' bindings, in precedence order
    rpcs: Mapping[str, Endpoint] = field(default_factory=dict)  # by RPC path
    refused: Mapping[str, str] = field(default_factory=dict)  # RPC path → why not offered
    problems: tuple[str, ...] = ()
    reserved: frozenset[str] = frozenset()

    def match(self, http_method: str, path: str) -> Matched | WrongMethod | RpcPath | None:
        """The route of ``http_method`` on the raw (percent-encoded) ``path``."""
        if path in self.reserved:
            return None
        allowed: set[str] = set()
        for endpoint in self.routes:
            assert endpoint.template is not None
            bindings = endpoint.template.match(path)
            if bindings is None:
                continue
            if endpoint.http_method in (http_method, ANY_METHOD):
                return Matched(endpoint, bindings)
            allowed.add(endpoint.http_method)
        if RPC_PATH.fullmatch(path) or path in self.rpcs or path in self.refused:
            return RpcPath(path)
        return WrongMethod(tuple(sorted(allowed))) if allowed else None

    def methods(self, path: str) -> tuple[str, ...]:
        """Every HTTP method of the routes at the raw ``path`` (``ANY_METHOD`` for a rule
        that leaves it open), for a CORS preflight. A path of the RPC shape has ``POST``
        whether a method is there or not, so that which services exist stays private."""
        if path in self.reserved:
            return ()
        found = {
            e.http_method
            for e in self.routes
            if e.template is not None and e.template.match(path) is not None
        }
        if RPC_PATH.fullmatch(path) or path in self.rpcs or path in self.refused:
            found.add(RPC_METHOD)
        return tuple(sorted(found))

    def rpc(self, http_method: str, path: str) -> Matched | WrongMethod:
        """The method at the RPC path ``path``; raises ``NotFound`` when there is none,
        ``NoRoute`` when it is not offered over HTTP."""
        endpoint = self.rpcs.get(path)
        if endpoint is None:
            if path in self.refused:
                raise NoRoute(self.refused[path])
            raise NotFound("no such path")
        if http_method != RPC_METHOD:
            return WrongMethod((RPC_METHOD,))
        return Matched(endpoint)


def compile_table(catalog: Catalog, reserved: frozenset[str] = frozenset()) -> TranscodingTable:
    """The routes of every routed service that a merged file describes."""
    pool, problems = build_pool(catalog.files)
    routes: list[Endpoint] = []
    rpcs: dict[str, Endpoint] = {}
    refused: dict[str, str] = {}
    for service_name in sorted(catalog.routes):
        try:
            service = pool.FindServiceByName(service_name)
        except KeyError:
            continue  # routed by routes.json alone: no descriptor to transcode with
        for method in service.methods:
            kind = CallKind.of(method.client_streaming, method.server_streaming)
            rpc_path = f"/{service_name}/{method.name}"
            if method.client_streaming:
                refused[rpc_path] = (
                    f"{service_name}/{method.name} is a {STREAMING[kind]} method: its requests"
                    " are a stream, which HTTP/JSON does not carry; call it over gRPC"
                )
                continue
            backend = catalog.routes[service_name]
            rpc = HttpBinding(RPC_METHOD, PathTemplate(rpc_path, (), ()), WHOLE)
            rpcs[rpc_path] = _endpoint(method, backend, kind, rpc, len(routes), template=False)
            rules = method_rules(method)
            problems.extend(rules.problems)
            for binding in rules.bindings:
                routes.append(_endpoint(method, backend, kind, binding, len(routes)))
    kept = _unique(sorted(routes, key=_precedence), problems)
    return TranscodingTable(pool, tuple(kept), rpcs, refused, tuple(problems), reserved)


def _endpoint(
    method: MethodDescriptor,
    backend: str,
    kind: CallKind,
    binding: HttpBinding,
    order: int,
    *,
    template: bool = True,
) -> Endpoint:
    return Endpoint(
        service=method.containing_service.full_name,
        method=method.name,
        backend=backend,
        kind=kind,
        request_type=method.input_type,
        response_type=method.output_type,
        http_method=binding.http_method,
        template=binding.template if template else None,
        body=binding.body,
        response_body=binding.response_body,
        order=order,
    )


def _shape(endpoint: Endpoint) -> tuple[object, ...]:
    """What a route matches: its HTTP method, its segments and its verb."""
    assert endpoint.template is not None
    return endpoint.http_method, endpoint.template.segments, endpoint.template.verb


def _precedence(endpoint: Endpoint) -> tuple[object, ...]:
    template = endpoint.template
    assert template is not None
    literals = tuple(s.literal for s in template.segments)
    return (
        template.rank,
        literals,
        template.verb,
        endpoint.http_method == ANY_METHOD,
        (endpoint.order),
    )


def _unique(routes: list[Endpoint], problems: list[str]) -> list[Endpoint]:
    """``routes`` without those that repeat an earlier route's shape."""
    kept: dict[tuple[object, ...], Endpoint] = {}
    for endpoint in routes:
        first = kept.setdefault(_shape(endpoint), endpoint)
        if first is not endpoint:
            assert endpoint.template is not None
            problems.append(
                f"{endpoint.service}/{endpoint.method}: {endpoint.http_method} "
                f"{endpoint.template.text} is not used: {first.service}/{first.method} "
                "has the same route"
            )
    return list(kept.values())


def build_pool(files: Mapping[str, ProtoFile]) -> tuple[DescriptorPool, list[str]]:
    """A descriptor pool of ``files``, each after the files it imports; a file that cannot
    be built (or whose imports cannot) is left out, and a problem says why."""
    pool = DescriptorPool()
    built: set[str] = set()
    failed: dict[str, str] = {}

    def add(name: str, importers: tuple[str, ...]) -> bool:
        if name in built or name in failed:
            return name in built
        file = files.get(name)
        if file is None or name in importers:
            failed[name] = "it is not described" if file is None else "its imports form a cycle"
            return False
        for dependency in file.dependencies:
            if not add(dependency, (*importers, name)):
                failed[name] = f"its import {dependency!r} cannot be built"
                return False
        try:
            pool.AddSerializedFile(file.serialized)
        except (TypeError, ValueError) as exc:
            failed[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return False
        built.add(name)
        return True

    for name in sorted(files):
        add(name, ())
    problems = [f"file {name!r} is not transcoded: {why}" for name, why in sorted(failed.items())]
    return pool, problems
