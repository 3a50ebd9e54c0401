"""The transparent proxy of the public gRPC port: every method of every routed back-end service.

``BackendProxy`` is a generic handler, registered after the gateway's own services, so that it
sees every call they do not take. A call's service names its back-end (``Catalog.backend_of``:
the ``services`` of routes.json, and the services learned from the back-ends' reflection).

Each call, in order:

1. the drain: refused with UNAVAILABLE once the drain has begun;
2. authentication: a valid bearer token in ``authorization``, checked like
   ``dialog.v1.Gateway``'s (UNAUTHENTICATED); only then is a service that no back-end serves
   refused (UNIMPLEMENTED), so that the API's shape is not public;
3. scopes: ``BackendConfig.call_scopes`` (the back-end's ``scopes`` and its ``method_scopes``
   of the service and of the method), all required (PERMISSION_DENIED);
4. the process's ``MAX_INFLIGHT``: a call holds one place among the process's work in
   flight (``InflightSlot``, the count of ``DialogService.inflight``, shared with dialog
   messages) from here until it ends, streams included; a full process refuses it at once
   with ``ServerBusy`` (UNAVAILABLE, ``retry-after`` trailer);
5. the rate limit: a call counts as one message in the user's window (RESOURCE_EXHAUSTED);
6. the back-end's circuit breaker: while it is open, UNAVAILABLE without touching the network;
7. the relay, over the back-end's mutual-TLS channel (``BackendPool.channels``). Messages are
   raw bytes both ways, never decoded. gRPC's framing is the same for the four kinds of call,
   so one relay serves them all (``StreamRelay``): requests flow to the back-end as the client
   sends them, responses to the client as the back-end sends them, and the kind of call stays
   a contract between the two ends. A method that a merged descriptor says is unary takes a
   shorter way (``UnaryRelay``), the same on the wire: one request, one response or status.

Metadata to the back-end: only the names in ``FORWARDED_METADATA`` and the back-end's
``forward_metadata``, values as they came (``-bin`` values as bytes); then ``x-dialog-user``,
the token's subject, and ``x-dialog-client``, the verified client certificate's identity when
there is one; then ``traceparent`` (and ``tracestate``) of the call's span, never the
client's. ``authorization``, cookies and everything else stay behind; ``grpc-*`` headers
are gRPC's own (``grpc-timeout`` becomes the outgoing deadline).

Tracing: each call to a routed service has a server span, ``<pkg.Service>/<Method>``
(``rpc.system``, ``rpc.service``, ``rpc.method`` and the final ``rpc.grpc.status_code``),
a child of the client's ``traceparent``/``tracestate`` metadata; the back-end continues the
trace from the metadata it receives. A call to a service no back-end serves has no span
(its name is the client's to choose, so unbounded).

Metadata back: the back-end's response headers as soon as they arrive (a unary call's with
its response or status), then its status code, details and trailers as they are
(``grpc-status-details-bin`` included).

Deadlines and cancellation: the outgoing call's timeout is what the incoming call has left;
without a deadline, a unary call gets the back-end's ``timeout_ms`` and any other none. Every
call ends when the caller's token expires (UNAUTHENTICATED "token expired"). A client that
cancels (or whose deadline passes) cancels the back-end call; a back-end that ends the call
ends the client's with its status.

While the process drains, a call awaiting its one response (unary, client stream) is work in
flight, like a message: it is cancelled with UNAVAILABLE at the drain's work deadline; a call
whose responses stream ends with UNAVAILABLE when the drain closes, like ``Subscribe``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from opentelemetry.trace import Span

from gateway import metrics, spans, tracing
from gateway.auth import Identity, require_scopes
from gateway.backend_stream import CLIENT_METADATA_KEY, USER_METADATA_KEY
from gateway.breaker import Outcome, Permit
from gateway.config import BackendConfig
from gateway.errors import (
    DialogError,
    Draining,
    Internal,
    NoRoute,
    PermissionDenied,
)
from gateway.grpc.descriptors import CallKind, Catalog
from gateway.grpc.errors import Context, abort, status_of
from gateway.grpc.expiry import one_answer, until_expiry
from gateway.grpc.peer import client_cert_identity
from gateway.lifecycle import REFUSED, Drain, Phase
from gateway.service import DialogService
from gateway.upstream import BackendPool

log = logging.getLogger(__name__)

SURFACE = "grpc"
# Client metadata forwarded to every back-end; a back-end's forward_metadata adds names.
# The trace context is never the client's: it is the gateway span's (``outgoing_metadata``).
FORWARDED_METADATA = frozenset({"x-request-id"})


def allowed_metadata(backend: BackendConfig) -> frozenset[str]:
    """The client metadata names ``backend`` receives (read per call: a reload may change
    them)."""
    return FORWARDED_METADATA | frozenset(backend.forward_metadata)


UNKNOWN = "unknown"  # grpc_type and grpc_method of a method no merged descriptor describes
SINGLE_RESPONSE = frozenset({CallKind.UNARY, CallKind.CLIENT_STREAM})
# Subscriptable in the type stubs only.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]
C = TypeVar("C", bound=grpc.aio.Call)


def split_method(path: str) -> tuple[str, str] | None:
    """("pkg.Service", "Method") of a call's path "/pkg.Service/Method", or None."""
    service, _, method = path.removeprefix("/").partition("/")
    if not path.startswith("/") or not service or not method or "/" in method:
        return None
    return service, method


def outgoing_metadata(
    incoming: Iterable[tuple[str, str | bytes]],
    allowed: frozenset[str],
    identity: Identity,
    trace_context: Mapping[str, str],
) -> Metadata:
    """What the back-end receives: the allowed client metadata, then the verified identity,
    then ``trace_context`` (``tracing.carrier`` of the gateway's span), which replaces
    whatever trace context the client sent."""
    forwarded = [(k, v) for k, v in incoming if k in allowed and k not in tracing.TRACE_LABELS]
    forwarded.append((USER_METADATA_KEY, identity.subject))
    if identity.client:
        forwarded.append((CLIENT_METADATA_KEY, identity.client))
    forwarded.extend(trace_context.items())
    return tuple(forwarded)


def outgoing_timeout_s(
    remaining_s: float | None, kind: CallKind | None, backend: BackendConfig
) -> float | None:
    """The back-end call's timeout: what the client's call has left; without a deadline,
    the back-end's ``timeout_ms`` for a unary call, and none for the others."""
    if remaining_s is not None:
        return max(0.0, remaining_s)
    return backend.timeout_ms / 1000 if kind is CallKind.UNARY else None


@dataclass(frozen=True)
class Route:
    """Where one call goes, and what kind of call its method is (None: no merged
    descriptor describes it)."""

    path: str
    service: str
    method: str
    backend: BackendConfig
    kind: CallKind | None

    @property
    def labels(self) -> tuple[str, str, str]:
        """``grpc_type``, ``grpc_service``, ``grpc_method``: bounded, since the service is
        a routed one and the method one its descriptor names."""
        if self.kind is None:
            return UNKNOWN, self.service, UNKNOWN
        return self.kind.value, self.service, self.method


class BackendProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Relays any call that the gateway's own services do not take (module docstring)."""

    def __init__(self, service: DialogService, catalog: Callable[[], Catalog]):
        self._service = service
        self._catalog = catalog

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler:
        route = self._route(handler_call_details.method)
        kind = route.kind if route is not None else None
        drain = self._service.drain

        # No (de)serializers: messages stay bytes.
        if kind is CallKind.UNARY:

            async def unary(request: bytes, context: Context) -> bytes | None:
                return await self._handle(route, context, UnaryRelay(request, drain))

            return grpc.unary_unary_rpc_method_handler(unary)

        async def relay(requests: AsyncIterator[bytes], context: Context) -> None:
            await self._handle(route, context, StreamRelay(requests, kind, drain))

        return grpc.stream_stream_rpc_method_handler(relay)

    def _route(self, path: str) -> Route | None:
        """The route of a call to ``path``, or None when no back-end serves its service."""
        catalog = self._catalog()
        target = split_method(path)
        name = catalog.backend_of(target[0]) if target else None
        backend = self._service.pool.configs.get(name) if name else None
        if target is None or backend is None:
            return None
        return Route(path, *target, backend, catalog.kind_of(*target))

    async def _handle(
        self, route: Route | None, context: Context, relay: Relay[Any]
    ) -> bytes | None:
        """Admit and relay one call, then end it as the back-end did; an error of the
        gateway's own aborts it instead."""
        started = time.monotonic()
        if route is not None:
            metrics.GRPC_STARTED.labels(*route.labels).inc()
        span = self._span(route, context)
        code = grpc.StatusCode.CANCELLED  # the client went away, unless the call ends otherwise
        try:
            ending = await self._call(route, context, span, relay)
            code = ending.code
        except DialogError as exc:
            code = status_of(exc)
            await abort(context, exc)
        except Exception:
            log.exception("proxied call %s failed", route.path if route else "(unrouted)")
            code = grpc.StatusCode.INTERNAL
            await abort(context, Internal())
        finally:
            if route is not None:
                metrics.GRPC_HANDLED.labels(*route.labels, code.name).inc()
                metrics.GRPC_HANDLING_SECONDS.labels(*route.labels).observe(
                    time.monotonic() - started, exemplar=tracing.exemplar(span)
                )
            spans.end_rpc(span, code.name)
        return await relay.end(context, ending)  # (``abort`` raises: the call has its ending)

    def _span(self, route: Route | None, context: Context) -> Span:
        """The call's server span (see the module docstring): a non-recording one, which
        only carries the client's context, for an unrouted call."""
        tracer = self._service.tracer if route is not None else tracing.NO_TRACER
        service, method = (route.service, route.method) if route else ("", "")
        metadata = context.invocation_metadata()
        return spans.grpc_server_span(tracer, method, metadata, context.peer(), service=service)

    async def _call(
        self, route: Route | None, context: Context, span: Span, relay: Relay[Any]
    ) -> Ending:
        """Admit the call (drain, token, route, scopes, rate), then relay it."""
        self._service.drain.check()
        identity = await self._service.access.authenticate(
            [str(v) for k, v in context.invocation_metadata() or () if k == "authorization"],
            SURFACE,
        )
        client = client_cert_identity(context)
        if client:
            identity = dataclasses.replace(identity, client=client)
        if route is None:
            raise NoRoute("no back-end serves this service")
        try:
            require_scopes(identity, route.backend.call_scopes(route.service, route.method))
        except PermissionDenied:
            metrics.AUTH_FAILURES.labels(surface=SURFACE, reason="scope").inc()
            raise
        with self._service.hold_inflight(SURFACE):
            await self._service.access.rate_limit(identity, SURFACE)
            return await self._relay(route, identity, context, span, relay)

    async def _relay(
        self, route: Route, identity: Identity, context: Context, span: Span, relay: Relay[C]
    ) -> Ending:
        """Relay one admitted call (``relay``: the step of its kind); the back-end's ending."""
        pool = self._service.pool
        name = route.backend.name
        remaining_s = context.time_remaining()
        breaker = BreakerReport(pool, name)
        call = relay.start(
            pool.channels[name],
            route.path,
            outgoing_timeout_s(remaining_s, route.kind, route.backend),
            outgoing_metadata(
                context.invocation_metadata() or (),
                allowed_metadata(pool.configs[name]),
                identity,
                tracing.carrier(span),
            ),
        )
        try:
            expiry = asyncio.get_running_loop().time() + self._service.access.remaining_s(identity)
            ending = await relay.finish(call, context, breaker, expiry)
            breaker.settle(call_outcome(ending.code, client_deadline=remaining_s is not None))
        finally:
            call.cancel()
            breaker.settle(Outcome.ABANDONED)  # unless settled before
        return ending


@dataclass(frozen=True)
class Ending:
    """How the back-end ended a call: its status, and a unary call's response."""

    code: grpc.StatusCode
    details: str
    trailers: Metadata
    response: bytes | None = None


class Relay(Protocol[C]):
    """The step that differs between kinds of call: start the back-end call (``C``),
    relay it until it ends (within the token's ``expiry``, loop time), and end the
    client's call as the back-end did (the handler's result)."""

    def start(
        self, channel: grpc.aio.Channel, path: str, timeout: float | None, metadata: Metadata
    ) -> C: ...

    async def finish(
        self, call: C, context: Context, breaker: BreakerReport, expiry: float
    ) -> Ending: ...

    async def end(self, context: Context, ending: Ending) -> bytes | None: ...


class StreamRelay:
    """Any call, as a stream both ways: requests flow to the back-end as the client sends
    them, responses to the client as the back-end sends them."""

    def __init__(self, requests: AsyncIterator[bytes], kind: CallKind | None, drain: Drain):
        self._requests = requests
        self._kind = kind
        self._drain = drain

    def start(
        self, channel: grpc.aio.Channel, path: str, timeout: float | None, metadata: Metadata
    ) -> grpc.aio.StreamStreamCall[bytes, bytes]:
        call = channel.stream_stream(path, None, None)
        return call(self._requests, timeout=timeout, metadata=metadata)

    async def finish(
        self,
        call: grpc.aio.StreamStreamCall[bytes, bytes],
        context: Context,
        breaker: BreakerReport,
        expiry: float,
    ) -> Ending:
        responses = until_expiry(self._responses(call, context, breaker), expiry)
        if self._kind in SINGLE_RESPONSE:
            responses = self._drain.bounded(responses)
        else:
            responses = self._drain.until(Phase.CLOSING, responses)
        return await self._send(call, responses, context)

    async def end(self, context: Context, ending: Ending) -> None:
        context.set_trailing_metadata(ending.trailers)
        if ending.code is not grpc.StatusCode.OK:
            context.set_code(ending.code)
            context.set_details(ending.details)

    async def _send(
        self,
        call: grpc.aio.StreamStreamCall[bytes, bytes],
        responses: AsyncIterator[bytes],
        context: Context,
    ) -> Ending:
        """Send ``responses`` to the client; the back-end call's ending once it has ended."""
        try:
            async for message in responses:
                await context.write(message)
            # The responses end early only when the drain closes (the wait for the next
            # one, cancelled, cancels the back-end call).
            if self._drain.phase is Phase.CLOSING and (not call.done() or call.cancelled()):
                raise Draining(REFUSED)
            code, trailers = await call.code(), await call.trailing_metadata()
            return Ending(code, await call.details() or "", pairs(trailers))
        except grpc.aio.AioRpcError as exc:
            return failed(exc)

    @staticmethod
    async def _responses(
        call: grpc.aio.StreamStreamCall[bytes, bytes], context: Context, breaker: BreakerReport
    ) -> AsyncIterator[bytes]:
        """The back-end's response headers, sent on as soon as they arrive, then its
        messages; a failed call raises ``grpc.aio.AioRpcError``."""
        headers = await call.initial_metadata()
        if not call.done() or await call.code() is grpc.StatusCode.OK:
            breaker.settle(Outcome.SUCCEEDED)  # the back-end answered
            await context.send_initial_metadata(pairs(headers))
        async for message in call:
            yield message


class UnaryRelay:
    """A unary call: its request to the back-end, then the back-end's response headers,
    response, status and trailers, once it has answered."""

    def __init__(self, request: bytes, drain: Drain):
        self._request = request
        self._drain = drain

    def start(
        self, channel: grpc.aio.Channel, path: str, timeout: float | None, metadata: Metadata
    ) -> grpc.aio.UnaryUnaryCall[bytes, bytes]:
        call = channel.unary_unary(path, None, None)
        return call(self._request, timeout=timeout, metadata=metadata)

    async def finish(
        self,
        call: grpc.aio.UnaryUnaryCall[bytes, bytes],
        context: Context,
        breaker: BreakerReport,
        expiry: float,
    ) -> Ending:
        try:
            response = await one_answer(call, self._drain, expiry)
            headers, trailers = await call.initial_metadata(), await call.trailing_metadata()
            ending = Ending(grpc.StatusCode.OK, "", pairs(trailers), response)
        except grpc.aio.AioRpcError as exc:
            headers, ending = exc.initial_metadata(), failed(exc)
        if headers:  # sent before the response or status
            await context.send_initial_metadata(pairs(headers))
        return ending

    async def end(self, context: Context, ending: Ending) -> bytes:
        if ending.response is None:
            # Not set_code and return None: grpc aio would send an empty message first.
            await context.abort(ending.code, ending.details, ending.trailers)
        context.set_trailing_metadata(ending.trailers)
        return ending.response


def pairs(metadata: Any) -> Metadata:
    """Metadata as received (``grpc.aio.Metadata``, or None), as (key, value) pairs."""
    return tuple(metadata or ())


def failed(error: grpc.aio.AioRpcError) -> Ending:
    """The ending of a back-end call that failed with ``error``."""
    return Ending(error.code(), error.details() or "", pairs(error.trailing_metadata()))


class BreakerReport:
    """A call admitted by ``backend``'s circuit breaker (``BackendUnavailable`` when it
    refuses), and its one report back: the first ``settle`` counts, later ones are
    ignored."""

    def __init__(self, pool: BackendPool, backend: str):
        self._permit: Permit | None = pool.admit(backend)
        self._pool = pool
        self._backend = backend

    def settle(self, outcome: Outcome) -> None:
        if self._permit is not None:
            permit, self._permit = self._permit, None
            self._pool.settle(self._backend, permit, outcome)


def call_outcome(code: grpc.StatusCode, *, client_deadline: bool) -> Outcome:
    """What a call's status says of the back-end's health: UNAVAILABLE, and a deadline the
    gateway set, are failures; a client's own deadline or cancellation is neither; any
    other status is an answer."""
    if code is grpc.StatusCode.UNAVAILABLE:
        return Outcome.FAILED
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Outcome.ABANDONED if client_deadline else Outcome.FAILED
    if code is grpc.StatusCode.CANCELLED:
        return Outcome.ABANDONED
    return Outcome.SUCCEEDED
