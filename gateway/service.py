"""The path every surface shares: authenticate, admit, route, forward, deliver.

Surfaces (gRPC, HTTP, WebSocket) only translate their transport into calls on
``DialogService`` and carry out what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from dialog.v1 import message_pb2
from gateway import metrics, tracing
from gateway.auth import (
    Identity,
    bearer_token,
    decode_identity,
    encode_identity,
    one_authorization,
    require_scopes,
)
from gateway.authenticator import Authenticator
from gateway.config import GatewayConfig
from gateway.delivery import QueuedWork, entity_key
from gateway.discovery import with_discovered
from gateway.errors import (
    BackendFailed,
    BackendUnavailable,
    DialogError,
    IdempotencyConflict,
    OutOfOrder,
    PermissionDenied,
    RateLimited,
    ServerBusy,
    StoreUnavailable,
    Unauthenticated,
)
from gateway.events import EventHub, Subscription
from gateway.forwarding import SharedUpstreams, Upstreams
from gateway.idempotency import Outcome, dedup_key, fingerprint
from gateway.lifecycle import Drain
from gateway.origins import origin_allowed, parse_allowed_origins
from gateway.redelivery import Redelivery
from gateway.routing import RouteTable
from gateway.store import Admitted, Completion, DedupStatus, EntityVerdict, Intake, Store
from gateway.store.connect import connect_store
from gateway.tickets import TICKET_BYTES, ticket_lifetime_s, well_formed
from gateway.transcode.cors import CorsPolicy
from gateway.translate import (
    DELTA,
    QUEUED,
    accept_client_message,
    is_final,
    make_ack,
    make_error,
    set_time,
)
from gateway.upstream import BackendChanges, BackendPool

# Back-end streams kept between the requests of POST /messages and Gateway.Send: for
# this many users at most, each closed once idle this long.
SHARED_STREAMS_MAX_USERS = 1024
SHARED_STREAMS_IDLE_S = 60.0


def _cors_policy(config: GatewayConfig) -> CorsPolicy:
    """Who may call from a browser: ``ALLOWED_ORIGINS``, and the request headers clients
    send (the back-ends' ``forward_metadata`` among them)."""
    forwarded = (name for b in config.routes.backends for name in b.forward_metadata)
    return CorsPolicy.of(parse_allowed_origins(config.allowed_origins), forwarded)


def new_id() -> str:
    return uuid.uuid4().hex


class Settled(enum.Enum):
    """How a forwarded message ended, which decides what happens to its in-flight record."""

    DELIVERED = "delivered"  # its final reply is in
    QUEUED = "queued"  # moved into the durable queue
    ABANDONED = "abandoned"  # its client went away first: queued, to be delivered later
    FAILED = "failed"  # reported to its client as an error: forgotten


def _with_seq(stored: message_pb2.Message, seq: int) -> message_pb2.Message:
    """What the back-end receives: a copy of the stored message, with its entity seq
    (or 0)."""
    out = message_pb2.Message()
    out.CopyFrom(stored)
    out.seq = seq
    return out


@dataclass(frozen=True)
class Admission:
    """An admitted message: stored, routed, and either to forward or a replay.

    ``key`` is the idempotency key the store holds for it (empty when the gateway chose
    the id); ``replay`` is the recorded outcome when the id was seen before (or an
    empty one for an entity seq applied before). ``entity`` is the store key of the
    entity whose seq ``entity_seq`` the message holds. ``work`` is what the back-end
    gets, kept durably in the store as ``inflight`` until the message is settled.
    ``trace`` is the trace context the message was admitted in: its back-end calls'
    spans are its children.
    """

    stored: message_pb2.Message
    backend: str
    key: str = ""
    replay: Outcome | None = None
    entity: str = ""
    entity_seq: int = 0
    work: QueuedWork | None = None
    inflight: str = ""
    trace: Context | None = None


class InflightSlot:
    """One relayed call's place in the process's work in flight: ``MAX_INFLIGHT`` counts
    dialog messages and relayed calls together, in ``DialogService.inflight``.

    Taken when built: a full process raises ``ServerBusy`` (counted as
    ``dialog_gateway_rate_limited_total{limit="inflight"}``, like a refused message);
    given back by the first ``release`` (later ones do nothing), or at the end of a
    ``with`` block. ``MAX_INFLIGHT`` is read per call, so a reload applies at once."""

    def __init__(self, service: DialogService, surface: str):
        service.check_inflight(surface)
        service.inflight += 1
        self._service: DialogService | None = service

    def release(self) -> None:
        if self._service is not None:
            service, self._service = self._service, None
            service.inflight -= 1

    def __enter__(self) -> InflightSlot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class DialogService:
    """Shared state and decisions of the gateway process."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        base_dir: Path = Path("."),
        clock: Callable[[], float] = time.time,
        tracer: Tracer = tracing.NO_TRACER,
    ):
        self.config = config
        # The addresses Consul reported, by back-end name (gateway.consul): they replace the
        # target of the file in every configuration put in force.
        self.discovered: dict[str, tuple[str, ...]] = {}
        self.clock = clock
        self.tracer = tracer
        self.base_dir = base_dir
        self.store: Store | None = None
        self.hub: EventHub | None = None
        self.redelivery: Redelivery | None = None
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{new_id()[:8]}"
        self.authenticator = Authenticator.from_config(config, base_dir=base_dir, clock=clock)
        self.cors = _cors_policy(config)
        self.inflight = 0
        self._shared_upstreams = SharedUpstreams(
            self._open_upstreams, max_users=SHARED_STREAMS_MAX_USERS, idle_s=SHARED_STREAMS_IDLE_S
        )
        self.drain = Drain(config.drain_timeout_s)
        self.routes = RouteTable.from_config(config.routes)
        self.pool = BackendPool(
            config.routes,
            max_message_bytes=config.max_message_bytes,
            base_dir=base_dir,
            breaker_failures=config.breaker_failures,
            breaker_open_ms=config.breaker_open_ms,
            retry_budget_ratio=config.retry_budget_ratio,
            retry_budget_min_per_s=config.retry_budget_min_per_s,
            tracer=tracer,
        )

    def apply_config(self, config: GatewayConfig) -> BackendChanges:
        """Take a reloaded configuration: its back-ends (``BackendPool.apply``), its routes,
        and the settings read from ``self.config`` at use time. All or nothing: on
        ``OSError`` (a certificate file of a new channel) nothing changed. Settings read
        once at start (listeners, TLS, tokens, store, ...) keep their old values until a
        restart (docs/mesh.md, "Reload"). The instances found by discovery
        (``self.discovered``) replace the targets of their back-ends."""
        routes = with_discovered(config.routes, self.discovered)
        config = dataclasses.replace(config, routes=routes)
        changes = self.pool.apply(config.routes, max_message_bytes=config.max_message_bytes)
        self.routes = RouteTable.from_config(config.routes)
        self.cors = _cors_policy(config)
        self.config = config
        return changes

    async def start(self) -> None:
        """Open the message store and the event hub, start the queue workers, load the
        JWKS keys, if configured, and start their refresher."""
        config = self.config
        self.store = await connect_store(
            data_dir=self.base_dir / config.data_dir,
            redis_url=config.redis_url,
            max_attempts=config.max_delivery_attempts,
            sync=config.store_sync,
        )
        self.hub = EventHub(
            self.store,
            buffer_max=config.outbound_queue_max,
            log_max_len=config.event_log_max_len,
            log_max_age_s=config.event_log_max_age_s,
        )
        self.hub.start()
        self.redelivery = Redelivery(
            self.store,
            config,
            consumer=self.replica,
            timeouts_s={name: b.timeout_ms / 1000 for name, b in self.pool.configs.items()},
            deliver=self._deliver_queued,
            dead=self._report_dead,
            accepting=self._delivering,
        )
        self.redelivery.start()
        await self.authenticator.start()

    async def close(self) -> None:
        await self.authenticator.close()
        await self._shared_upstreams.aclose()
        if self.redelivery is not None:
            await self.redelivery.close()
        if self.hub is not None:
            await self.hub.close()
        await self.pool.close()
        if self.store is not None:
            await self.store.close()

    async def authenticate(
        self, authorization: str | Sequence[str] | None, surface: str
    ) -> Identity:
        """Verify an ``Authorization`` value (or every value a request carried: more than one
        is refused, RFC 6750 section 3.1); count failures by reason."""
        if not isinstance(authorization, str) and authorization is not None:
            authorization = one_authorization(authorization)
        try:
            token = bearer_token(authorization)
        except Unauthenticated as exc:
            self._count_auth_failure(exc, surface)
            raise
        return await self.authenticate_token(token, surface)

    async def authenticate_token(self, token: str, surface: str) -> Identity:
        """Verify a bare token (a WebSocket ``auth`` frame); count failures by reason."""
        try:
            return await self.authenticator.authenticate(token)
        except Unauthenticated as exc:
            self._count_auth_failure(exc, surface)
            raise

    @staticmethod
    def _count_auth_failure(exc: Unauthenticated, surface: str) -> None:
        reason = metrics.auth_reason(exc.message)
        metrics.AUTH_FAILURES.labels(surface=surface, reason=reason).inc()

    async def admit(
        self,
        identity: Identity,
        msg: message_pb2.Message,
        surface: str,
        origin: object | None = None,
    ) -> Admission:
        """Rate-limit, stamp, route and order a client message; append it to the user's
        event log.

        Returns the stored message (with id, timestamp and the log's seq) and its
        back-end. A route that requires scopes refuses an identity without them
        (``PermissionDenied``). A client-chosen id is an idempotency key: a repeat with
        the same body is answered from the recorded outcome (``Admission.replay``), one
        with another body is refused. A message with ``context.entity`` and ``seq`` is
        applied in its entity's order: an old seq is acknowledged without being
        forwarded, a gap is refused with the seq expected (``OutOfOrder``). Once the
        process drains, every message is refused (``Draining``).
        """
        self.drain.check()
        store, hub = self._ready()
        self.check_inflight(surface)
        await self.rate_limit(identity, surface)
        entity_seq = msg.seq if msg.context.entity else 0
        stored = accept_client_message(msg, now_s=self.clock(), new_id=new_id)
        route = self.routes.resolve(stored)
        try:
            require_scopes(identity, route.scopes)
        except PermissionDenied:
            metrics.AUTH_FAILURES.labels(surface=surface, reason="scope").inc()
            raise
        backend = route.backend
        key = dedup_key(identity.subject, msg.id) if msg.id else ""
        entity = entity_key(identity.subject, stored.context.entity) if entity_seq else ""
        # Kept with the message, so that a delivery from the queue continues its trace.
        trace_context = tracing.current_carrier()
        work = QueuedWork(
            user=identity.subject,
            client=identity.client,
            key=key,
            entity=entity,
            log_seq=0,  # given by the log in the same step (``Store.admit``)
            message=_with_seq(stored, entity_seq),
            traceparent=trace_context.get(tracing.TRACEPARENT, ""),
            tracestate=trace_context.get(tracing.TRACESTATE, ""),
        )
        pending_s = self._pending_s(backend)
        # Durable before the ack: in its user's log, and in flight (if this process
        # dies, the message is queued).
        admitted = await store.admit(
            Intake(
                user=identity.subject,
                event=stored.SerializeToString(),
                message_id=stored.id,
                backend=backend,
                work=work.template(),  # the log's seq is filled in by the store
                lease_s=pending_s,
                key=key,
                body_hash=fingerprint(stored) if key else "",
                hold_s=pending_s,
                entity=entity,
                entity_seq=entity_seq,
            )
        )
        if admitted.entity is not None:
            metrics.ENTITY_ORDER.labels(verdict=admitted.entity.verdict.value).inc()
        if not admitted.taken:
            return self._not_taken(admitted, stored, backend, entity_seq, surface)
        stored.seq = admitted.seq
        await hub.appended(identity.subject, stored, origin)
        metrics.MESSAGES.labels(surface=surface, backend=backend).inc()
        return Admission(
            stored,
            backend,
            key,
            entity=entity,
            entity_seq=entity_seq,
            work=dataclasses.replace(work, log_seq=admitted.seq),
            inflight=admitted.inflight,
            trace=tracing.current_context(),
        )

    @staticmethod
    def _not_taken(
        admitted: Admitted,
        stored: message_pb2.Message,
        backend: str,
        entity_seq: int,
        surface: str,
    ) -> Admission:
        """A message the store did not take in: its id was seen before, or its entity
        seq was applied before (both answered, not forwarded again), or it leaves a
        gap in its entity's order (``OutOfOrder``)."""
        dedup, decision = admitted.dedup, admitted.entity
        if dedup is not None and dedup.status is not DedupStatus.NEW:
            if dedup.status is DedupStatus.CONFLICT:
                raise IdempotencyConflict(f"message id {stored.id!r} was used with another body")
            if dedup.outcome is None:
                raise IdempotencyConflict(
                    f"message {stored.id!r} is still being answered; retry shortly",
                    retry_after_s=1,
                )
            metrics.DUPLICATES.labels(surface=surface).inc()
            replay = Outcome.decode(dedup.outcome)
            return Admission(replay.stored, backend, replay=replay)
        assert decision is not None  # a store that takes nothing in says why
        if decision.verdict is EntityVerdict.GAP:
            raise OutOfOrder.expecting(stored.context.entity, decision.expected)
        # Applied before: acknowledged, not forwarded again.
        stored.seq = entity_seq
        return Admission(stored, backend, replay=Outcome(stored, ()))

    def check_inflight(self, surface: str) -> None:
        """Refuse new work with ``ServerBusy`` once ``MAX_INFLIGHT`` messages and relayed
        calls are in flight."""
        if self.inflight >= self.config.max_inflight:
            metrics.RATE_LIMITED.labels(surface=surface, limit="inflight").inc()
            raise ServerBusy("the gateway is busy; try again shortly", retry_after_s=1)

    def hold_inflight(self, surface: str) -> InflightSlot:
        """A place in ``MAX_INFLIGHT`` for a relayed call (``check_inflight``), given back
        by its ``release`` or at the end of its ``with`` block."""
        return InflightSlot(self, surface)

    async def rate_limit(self, identity: Identity, surface: str) -> None:
        """Count one message (or proxied gRPC call) in the user's sliding window, shared by
        every surface and replica; over ``RATE_LIMIT_MAX`` per window, raise ``RateLimited``."""
        store, _ = self._ready()
        retry_after = await store.rate_acquire(
            identity.subject,
            self.config.rate_limit_max,
            self.config.rate_limit_window_s,
            self.clock(),
        )
        if retry_after is not None:
            metrics.RATE_LIMITED.labels(surface=surface, limit="messages").inc()
            raise RateLimited("too many messages; slow down", retry_after_s=retry_after)

    def upstreams(self, identity: Identity) -> Upstreams:
        """Back-end streams for one client connection."""
        return self._open_upstreams(identity.subject, identity.client)

    def request_upstreams(self, identity: Identity) -> AbstractAsyncContextManager[Upstreams]:
        """The user's back-end streams for one request, kept between requests."""
        return self._shared_upstreams.lease(identity.subject, identity.client)

    def _open_upstreams(self, user: str, client: str) -> Upstreams:
        return Upstreams(
            self.pool, user, client=client, reply_queue_max=self.config.outbound_queue_max
        )

    async def replies(
        self, upstreams: Upstreams, identity: Identity, admission: Admission
    ) -> AsyncIterator[message_pb2.Message]:
        """Forward the admitted message and yield its replies, each appended to the user's
        event log; a replay yields the recorded replies instead.

        A back-end that is unavailable before it answered does not fail the message: it
        goes to the durable inbound queue, and the one reply is an ack with
        ``data.status`` "queued"; its replies reach the user's event log later. So does
        a message whose client went away before its answer ended. The outcome is
        recorded for repeats once the final reply is in; a message that failed is
        forgotten (and its entity seq released), so that its retry is forwarded again."""
        if admission.replay is not None:
            for reply in admission.replay.replies:
                yield reply
            return
        store, _ = self._ready()
        work = admission.work
        assert work is not None  # every admission that is not a replay has its work
        settled = Settled.FAILED
        self.inflight += 1
        try:
            if admission.entity and await store.queue_depth(admission.backend):
                # Messages are queued for this back-end: an ordered one waits its turn.
                settled = Settled.QUEUED
                yield await self._queue(admission, work)
                return
            answered = 0
            try:
                answers = self._forward(
                    upstreams, admission.backend, work, admission.trace, admission.inflight
                )
                async for reply in self.drain.bounded(answers):
                    answered += 1
                    if is_final(reply):
                        settled = Settled.DELIVERED  # answered, whatever the client does now
                    yield reply
            except BackendUnavailable:
                if answered:
                    raise
                settled = Settled.QUEUED
                yield await self._queue(admission, work)
        except (asyncio.CancelledError, GeneratorExit):
            if settled is Settled.FAILED:
                settled = Settled.ABANDONED
            raise
        finally:
            self.inflight -= 1
            with contextlib.suppress(Exception):
                await self._settle(admission, work, settled)

    async def _settle(self, admission: Admission, work: QueuedWork, settled: Settled) -> None:
        """Settle the in-flight record of an answered, abandoned or failed message."""
        store, _ = self._ready()
        if settled is Settled.DELIVERED:
            return  # settled with its outcome (``_forward``)
        if settled is Settled.ABANDONED:
            # Its client went away: acknowledged all the same, so delivered later.
            await self._queue(admission, work)
        elif settled is Settled.FAILED:
            await store.settle_inflight(admission.inflight)
            if work.entity:
                await store.release_entity_seq(work.entity, work.message.seq)
            if work.key:
                await store.forget(work.key)

    async def _forward(
        self,
        upstreams: Upstreams,
        backend: str,
        work: QueuedWork,
        trace_parent: Context | None = None,
        inflight: str = "",
    ) -> AsyncIterator[message_pb2.Message]:
        """Forward ``work.message``, append each reply to the user's log and yield it.
        The final reply is logged together with the outcome for repeats and the
        settling of the in-flight record ``inflight`` (if any): ``_complete``."""
        _, hub = self._ready()
        msg, answered = work.message, list[message_pb2.Message]()
        async for reply in upstreams.forward(backend, msg, trace_parent=trace_parent):
            reply.context.reply_to = msg.id
            if not reply.context.conversation_id:
                reply.context.conversation_id = msg.context.conversation_id
            set_time(reply, self.clock())
            if is_final(reply):
                answered.append(await self._complete(work, reply, answered, inflight))
            else:
                # A delta is not fsynced on its own: the final reply's commit covers it.
                durable = reply.content.type != DELTA
                answered.append(await hub.publish(work.user, reply, durable=durable))
            yield reply

    async def _complete(
        self,
        work: QueuedWork,
        reply: message_pb2.Message,
        earlier: Sequence[message_pb2.Message],
        inflight: str,
    ) -> message_pb2.Message:
        """Log the final ``reply`` (``reply.seq`` becomes its seq) and, in the same commit,
        record the outcome for repeats and settle the in-flight record."""
        store, hub = self._ready()
        reply.seq = 0
        completion = Completion(
            work.user,
            reply.SerializeToString(),
            key=work.key,
            # The outcome with the reply's seq, which the store fills in (one step).
            outcome=Outcome.template(work.logged(), earlier, reply) if work.key else None,
            ttl_s=self.config.dedup_ttl_s,
            inflight=inflight,
        )
        reply.seq = await store.complete(completion)
        await hub.appended(work.user, reply, None)
        return reply

    async def _queue(self, admission: Admission, work: QueuedWork) -> message_pb2.Message:
        """Move the in-flight message into the durable queue; the ack that says so (also
        what a repeat of its id gets until it is delivered)."""
        store, _ = self._ready()
        await store.settle_inflight(admission.inflight, requeue=True)
        queued = make_ack(work.logged(), status=QUEUED)
        if work.key:
            outcome = Outcome(work.logged(), (queued,)).encode()
            await store.record_outcome(work.key, outcome, self.config.dedup_ttl_s)
        metrics.QUEUED.labels(backend=admission.backend).inc()
        if self.redelivery is not None:
            self.redelivery.wake(admission.backend)
        return queued

    async def _deliver_queued(self, backend: str, work: QueuedWork) -> None:
        """Deliver a queued message; its replies go to the user's event log. Its back-end
        call's span is a child of the span the message was admitted in (a new trace for
        an entry queued without one): the delivery is the rest of that message's work.
        It uses the user's back-end streams kept between requests."""
        parent = tracing.from_carrier(work.trace_context())
        async with self._shared_upstreams.lease(work.user, work.client) as upstreams:
            async for _ in self._forward(upstreams, backend, work, parent):
                pass

    async def _report_dead(self, work: QueuedWork, error: DialogError) -> None:
        """Tell the user that a queued message went to the dead letters."""
        _, hub = self._ready()
        message = (
            f"message {work.message.id!r} could not be delivered after "
            f"{self.config.max_delivery_attempts} attempts ({error.message}); "
            "it is kept in the dead letters"
        )
        with contextlib.suppress(StoreUnavailable):
            await hub.publish(work.user, make_error(BackendFailed(message), work.message.id))

    def _pending_s(self, backend: str) -> float:
        """How long a message to ``backend`` may be in flight: its id is held that long,
        and its in-flight record is queued again after it (its gateway died)."""
        return (self.pool.configs[backend].timeout_ms + self.config.inflight_margin_ms) / 1000

    def _delivering(self, backend: str) -> bool:
        """Whether queued messages may go to ``backend`` now: not while its breaker is
        open, nor once the process drains (they wait in the store for the next one)."""
        return not self.drain.draining and self.pool.accepting(backend)

    async def store_ok(self) -> bool:
        """True when the message store answers (for the health checks)."""
        return self.store is not None and await self.store.ping()

    def _ready(self) -> tuple[Store, EventHub]:
        if self.store is None or self.hub is None:
            raise StoreUnavailable("the message store is not open yet")
        return self.store, self.hub

    async def subscribe(
        self, identity: Identity, after_seq: int = 0, owner: object | None = None
    ) -> Subscription:
        """The user's event stream after ``after_seq`` (0: from now on); its first
        message is a ``reset`` when that point was trimmed. Messages that ``owner`` (a
        connection) sends, passed to ``admit`` as their ``origin``, are left out."""
        _, hub = self._ready()
        return await hub.subscribe(identity.subject, after_seq, owner)

    def unsubscribe(self, identity: Identity, sub: Subscription) -> None:
        if self.hub is not None:
            self.hub.unsubscribe(identity.subject, sub)

    async def open_ws(self, identity: Identity) -> bool:
        """Count a WebSocket connection of the user unless ``MAX_WS_CONN`` are open (on
        every replica, with a shared store)."""
        store, _ = self._ready()
        return await store.conn_open(identity.subject, self.config.max_ws_conn)

    async def close_ws(self, identity: Identity) -> None:
        store, _ = self._ready()
        with contextlib.suppress(StoreUnavailable):
            await store.conn_close(identity.subject)

    def remaining_s(self, identity: Identity) -> float:
        """Seconds until the identity's token expires, leeway included."""
        return identity.expires_at + self.config.jwt_leeway_s - self.clock()

    def check_origin(self, origin: str | None) -> None:
        """Refuse a browser ``Origin`` that is not on ``ALLOWED_ORIGINS``."""
        if not origin_allowed(origin, self.cors.origins):
            raise PermissionDenied("this origin is not allowed")

    async def issue_ticket(self, identity: Identity) -> tuple[str, float]:
        """A single-use ticket standing for ``identity``, and its lifetime in seconds. It
        is kept in the message store, so any worker or replica redeems it."""
        store, _hub = self._ready()
        ttl_s = ticket_lifetime_s(identity, self.config.ws_ticket_ttl_s, self.clock())
        if ttl_s <= 0:
            raise Unauthenticated("the token has expired")
        ticket = secrets.token_urlsafe(TICKET_BYTES)
        if not await store.ticket_put(ticket, encode_identity(identity), ttl_s):
            raise RateLimited("too many outstanding tickets; try again shortly", retry_after_s=1)
        return ticket, ttl_s

    async def redeem_ticket(self, ticket: str, surface: str) -> Identity:
        """The identity behind a ticket; an unknown, used or expired one is refused alike."""
        store, _hub = self._ready()
        value = await store.ticket_take(ticket) if well_formed(ticket) else None
        try:
            identity = decode_identity(value) if value is not None else None
        except ValueError:
            identity = None
        if identity is None:
            metrics.AUTH_FAILURES.labels(surface=surface, reason="ticket").inc()
            raise Unauthenticated("invalid or expired ticket")
        return identity
