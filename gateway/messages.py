"""The life of a dialog message in the gateway: ``MessageLifecycle``.

Admitted (rate-limited, stamped, routed, ordered and made durable: ``Admission``),
forwarded to its back-end with each reply appended to the user's event log, and then
settled (``Settled``): completed with its final reply, moved into the durable queue
(and delivered from it later, or reported as a dead letter), or forgotten when it
failed. It works on the state of its ``DialogService`` (``DialogService.messages``):
the message store and event hub, the routes, back-ends and settings in force, and the
process's count of work in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.context import Context

from dialog.v1 import message_pb2
from gateway import metrics, tracing
from gateway.auth import Identity, require_scopes
from gateway.delivery import QueuedWork, entity_key
from gateway.errors import (
    BackendFailed,
    BackendUnavailable,
    DialogError,
    IdempotencyConflict,
    OutOfOrder,
    PermissionDenied,
    StoreUnavailable,
)
from gateway.forwarding import Upstreams
from gateway.idempotency import Outcome, dedup_key, fingerprint
from gateway.store import Admitted, Completion, DedupStatus, EntityVerdict, Intake
from gateway.translate import (
    DELTA,
    QUEUED,
    accept_client_message,
    is_final,
    make_ack,
    make_error,
    set_time,
)

if TYPE_CHECKING:
    from gateway.service import DialogService


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


class MessageLifecycle:
    """Admit, forward, complete, queue and settle the messages of one ``DialogService``."""

    def __init__(self, service: DialogService):
        self._service = service

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
        self._service.drain.check()
        store, hub = self._service.ready()
        self._service.check_inflight(surface)
        await self._service.access.rate_limit(identity, surface)
        entity_seq = msg.seq if msg.context.entity else 0
        stored = accept_client_message(msg, now_s=self._service.clock(), new_id=new_id)
        route = self._service.routes.resolve(stored)
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
        store, _ = self._service.ready()
        work = admission.work
        assert work is not None  # every admission that is not a replay has its work
        settled = Settled.FAILED
        self._service.inflight += 1
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
                async for reply in self._service.drain.bounded(answers):
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
            self._service.inflight -= 1
            with contextlib.suppress(Exception):
                await self._settle(admission, work, settled)

    async def _settle(self, admission: Admission, work: QueuedWork, settled: Settled) -> None:
        """Settle the in-flight record of an answered, abandoned or failed message."""
        store, _ = self._service.ready()
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
        _, hub = self._service.ready()
        msg, answered = work.message, list[message_pb2.Message]()
        async for reply in upstreams.forward(backend, msg, trace_parent=trace_parent):
            reply.context.reply_to = msg.id
            if not reply.context.conversation_id:
                reply.context.conversation_id = msg.context.conversation_id
            set_time(reply, self._service.clock())
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
        store, hub = self._service.ready()
        reply.seq = 0
        completion = Completion(
            work.user,
            reply.SerializeToString(),
            key=work.key,
            # The outcome with the reply's seq, which the store fills in (one step).
            outcome=Outcome.template(work.logged(), earlier, reply) if work.key else None,
            ttl_s=self._service.config.dedup_ttl_s,
            inflight=inflight,
        )
        reply.seq = await store.complete(completion)
        await hub.appended(work.user, reply, None)
        return reply

    async def _queue(self, admission: Admission, work: QueuedWork) -> message_pb2.Message:
        """Move the in-flight message into the durable queue; the ack that says so (also
        what a repeat of its id gets until it is delivered)."""
        store, _ = self._service.ready()
        await store.settle_inflight(admission.inflight, requeue=True)
        queued = make_ack(work.logged(), status=QUEUED)
        if work.key:
            outcome = Outcome(work.logged(), (queued,)).encode()
            await store.record_outcome(work.key, outcome, self._service.config.dedup_ttl_s)
        metrics.QUEUED.labels(backend=admission.backend).inc()
        if self._service.redelivery is not None:
            self._service.redelivery.wake(admission.backend)
        return queued

    async def deliver_queued(self, backend: str, work: QueuedWork) -> None:
        """Deliver a queued message; its replies go to the user's event log. Its back-end
        call's span is a child of the span the message was admitted in (a new trace for
        an entry queued without one): the delivery is the rest of that message's work.
        It uses the user's back-end streams kept between requests."""
        parent = tracing.from_carrier(work.trace_context())
        async with self._service.shared_upstreams.lease(work.user, work.client) as upstreams:
            async for _ in self._forward(upstreams, backend, work, parent):
                pass

    async def report_dead(self, work: QueuedWork, error: DialogError) -> None:
        """Tell the user that a queued message went to the dead letters."""
        _, hub = self._service.ready()
        message = (
            f"message {work.message.id!r} could not be delivered after "
            f"{self._service.config.max_delivery_attempts} attempts ({error.message}); "
            "it is kept in the dead letters"
        )
        with contextlib.suppress(StoreUnavailable):
            await hub.publish(work.user, make_error(BackendFailed(message), work.message.id))

    def _pending_s(self, backend: str) -> float:
        """How long a message to ``backend`` may be in flight: its id is held that long,
        and its in-flight record is queued again after it (its gateway died)."""
        service = self._service
        return (service.pool.configs[backend].timeout_ms + service.config.inflight_margin_ms) / 1000

    def delivering(self, backend: str) -> bool:
        """Whether queued messages may go to ``backend`` now: not while its breaker is
        open, nor once the process drains (they wait in the store for the next one)."""
        return not self._service.drain.draining and self._service.pool.accepting(backend)
