"""The path every surface shares: authenticate, admit, route, forward, deliver.

Surfaces (gRPC, HTTP, WebSocket) only translate their transport into calls on
``DialogService`` and carry out what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dialog.v1 import message_pb2
from gateway import metrics
from gateway.auth import Identity, bearer_token, one_authorization, require_scopes
from gateway.authenticator import Authenticator
from gateway.config import GatewayConfig
from gateway.errors import (
    IdempotencyConflict,
    PermissionDenied,
    RateLimited,
    ServerBusy,
    Unauthenticated,
)
from gateway.events import EventHub
from gateway.forwarding import Upstreams
from gateway.idempotency import Outcome, dedup_key, fingerprint
from gateway.origins import origin_allowed, parse_allowed_origins
from gateway.ratelimit import ConnectionCounter, SlidingWindow
from gateway.routing import RouteTable
from gateway.store import DedupStatus, Store
from gateway.store.connect import connect_store
from gateway.tickets import TicketBook
from gateway.translate import accept_client_message, set_time
from gateway.upstream import BackendPool

PENDING_MARGIN_S = 30.0


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Admission:
    """An admitted message: stored, routed, and either to forward or a replay.

    ``key`` is the idempotency key the store holds for it (empty when the gateway chose
    the id); ``replay`` is the recorded outcome when the id was seen before.
    """

    stored: message_pb2.Message
    backend: str
    key: str = ""
    replay: Outcome | None = None


class DialogService:
    """Shared state and decisions of the gateway process."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        base_dir: Path = Path("."),
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.clock = clock
        self.base_dir = base_dir
        self.store: Store | None = None
        self.authenticator = Authenticator.from_config(config, base_dir=base_dir, clock=clock)
        self.rate_limit = SlidingWindow(config.rate_limit_max, config.rate_limit_window_s)
        self.tickets = TicketBook(config.ws_ticket_ttl_s)
        self.allowed_origins = parse_allowed_origins(config.allowed_origins)
        self.inflight = 0
        self.ws_connections = ConnectionCounter(config.max_ws_conn)
        self.routes = RouteTable.from_config(config.routes)
        self.hub = EventHub(
            queue_max=config.outbound_queue_max, log_max_len=config.event_log_max_len
        )
        self.pool = BackendPool(
            config.routes, max_message_bytes=config.max_message_bytes, base_dir=base_dir
        )

    async def start(self) -> None:
        """Open the message store, load the JWKS keys, if configured, and start their
        refresher."""
        self.store = await connect_store(
            data_dir=self.base_dir / self.config.data_dir, redis_url=self.config.redis_url
        )
        await self.authenticator.start()

    async def close(self) -> None:
        await self.authenticator.close()
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

    async def admit(self, identity: Identity, msg: message_pb2.Message, surface: str) -> Admission:
        """Rate-limit, stamp and route a client message; deliver it to the user's stream.

        Returns the stored message (with id, timestamp and seq) and its back-end. A route
        that requires scopes refuses an identity without them (``PermissionDenied``). A
        client-chosen id is an idempotency key: a repeat with the same body is answered from
        the recorded outcome (``Admission.replay``), one with another body is refused.
        """
        if self.inflight >= self.config.max_inflight:
            metrics.RATE_LIMITED.labels(surface=surface, limit="inflight").inc()
            raise ServerBusy("the gateway is busy; try again shortly", retry_after_s=1)
        retry_after = self.rate_limit.acquire(identity.subject, self.clock())
        if retry_after is not None:
            metrics.RATE_LIMITED.labels(surface=surface, limit="messages").inc()
            raise RateLimited("too many messages; slow down", retry_after_s=retry_after)
        stored = accept_client_message(msg, now_s=self.clock(), new_id=new_id)
        route = self.routes.resolve(stored)
        try:
            require_scopes(identity, route.scopes)
        except PermissionDenied:
            metrics.AUTH_FAILURES.labels(surface=surface, reason="scope").inc()
            raise
        backend = route.backend
        key = ""
        if msg.id and self.store is not None:
            key = dedup_key(identity.subject, msg.id)
            timeout_s = self.pool.configs[backend].timeout_ms / 1000 + PENDING_MARGIN_S
            result = await self.store.remember(key, fingerprint(stored), timeout_s)
            if result.status is DedupStatus.CONFLICT:
                raise IdempotencyConflict(f"message id {msg.id!r} was used with another body")
            if result.outcome is None and result.status is DedupStatus.REPLAY:
                raise IdempotencyConflict(
                    f"message {msg.id!r} is still being answered; retry shortly", retry_after_s=1
                )
            if result.outcome is not None:
                metrics.DUPLICATES.labels(surface=surface).inc()
                replay = Outcome.decode(result.outcome)
                return Admission(replay.stored, backend, replay=replay)
        self.hub.publish(identity.subject, stored)
        metrics.MESSAGES.labels(surface=surface, backend=backend).inc()
        return Admission(stored, backend, key)

    def upstreams(self, identity: Identity) -> Upstreams:
        """Back-end streams for one client connection."""
        return Upstreams(
            self.pool,
            identity.subject,
            client=identity.client,
            reply_queue_max=self.config.outbound_queue_max,
        )

    async def replies(
        self, upstreams: Upstreams, identity: Identity, admission: Admission
    ) -> AsyncIterator[message_pb2.Message]:
        """Forward the admitted message and yield its replies, each delivered to the user's
        stream; a replay yields the recorded replies instead. The outcome is recorded for
        repeats once the final reply is in; a message that failed is forgotten, so that its
        retry is forwarded again."""
        if admission.replay is not None:
            for reply in admission.replay.replies:
                yield reply
            return
        msg, answered = admission.stored, []
        self.inflight += 1
        try:
            async for reply in upstreams.forward(admission.backend, msg):
                reply.context.reply_to = msg.id
                if not reply.context.conversation_id:
                    reply.context.conversation_id = msg.context.conversation_id
                set_time(reply, self.clock())
                answered.append(self.hub.publish(identity.subject, reply))
                yield reply
            if admission.key and self.store is not None:
                outcome = Outcome.of(msg, answered).encode()
                await self.store.record_outcome(admission.key, outcome, self.config.dedup_ttl_s)
                admission = dataclasses.replace(admission, key="")
        finally:
            self.inflight -= 1
            if admission.key and self.store is not None:
                with contextlib.suppress(Exception):
                    await self.store.forget(admission.key)

    def remaining_s(self, identity: Identity) -> float:
        """Seconds until the identity's token expires, leeway included."""
        return identity.expires_at + self.config.jwt_leeway_s - self.clock()

    def check_origin(self, origin: str | None) -> None:
        """Refuse a browser ``Origin`` that is not on ``ALLOWED_ORIGINS``."""
        if not origin_allowed(origin, self.allowed_origins):
            raise PermissionDenied("this origin is not allowed")

    def issue_ticket(self, identity: Identity) -> tuple[str, float]:
        """A single-use ticket standing for ``identity``, and its lifetime in seconds."""
        ticket = secrets.token_urlsafe(32)
        return ticket, self.tickets.issue(identity, ticket, self.clock())

    def redeem_ticket(self, ticket: str, surface: str) -> Identity:
        """The identity behind a ticket; an unknown, used or expired one is refused alike."""
        identity = self.tickets.redeem(ticket, self.clock())
        if identity is None:
            metrics.AUTH_FAILURES.labels(surface=surface, reason="ticket").inc()
            raise Unauthenticated("invalid or expired ticket")
        return identity
