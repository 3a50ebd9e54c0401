"""The path every surface shares: authenticate, admit, route, forward, deliver.

Surfaces (gRPC, HTTP, WebSocket) only translate their transport into calls on
``DialogService`` and carry out what it returns.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from dialog.v1 import message_pb2
from gateway import metrics
from gateway.auth import Identity, bearer_token, one_authorization, require_scopes
from gateway.authenticator import Authenticator
from gateway.config import GatewayConfig
from gateway.errors import PermissionDenied, RateLimited, ServerBusy, Unauthenticated
from gateway.events import EventHub
from gateway.forwarding import Upstreams
from gateway.origins import origin_allowed, parse_allowed_origins
from gateway.ratelimit import ConnectionCounter, SlidingWindow
from gateway.routing import RouteTable
from gateway.tickets import TicketBook
from gateway.translate import accept_client_message, set_time
from gateway.upstream import BackendPool


def new_id() -> str:
    return uuid.uuid4().hex


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
        """Load the JWKS keys, if configured, and start their refresher."""
        await self.authenticator.start()

    async def close(self) -> None:
        await self.authenticator.close()
        await self.pool.close()

    async def authenticate(
        self, authorization: str | Sequence[str] | None, surface: str
    ) -> Identity:
        """Verify an ``Authorization`` value (or every value a request carried: more than one
        is refused, RFC 6750 section 3.1); count failures by reason."""
        if not isinstance(authorization, str) and authorization is not None:
            authorization = one_authorization(authorization)
        try:
            return await self.authenticator.authenticate(bearer_token(authorization))
        except Unauthenticated as exc:
            metrics.AUTH_FAILURES.labels(
                surface=surface, reason=metrics.auth_reason(exc.message)
            ).inc()
            raise

    def admit(
        self, identity: Identity, msg: message_pb2.Message, surface: str
    ) -> tuple[message_pb2.Message, str]:
        """Rate-limit, stamp and route a client message; deliver it to the user's stream.

        Returns the stored message (with id, timestamp and seq) and its back-end. A route
        that requires scopes refuses an identity without them (``PermissionDenied``).
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
        self.hub.publish(identity.subject, stored)
        metrics.MESSAGES.labels(surface=surface, backend=backend).inc()
        return stored, backend

    def upstreams(self, identity: Identity) -> Upstreams:
        """Back-end streams for one client connection."""
        return Upstreams(
            self.pool,
            identity.subject,
            client=identity.client,
            reply_queue_max=self.config.outbound_queue_max,
        )

    async def replies(
        self, upstreams: Upstreams, identity: Identity, backend: str, msg: message_pb2.Message
    ) -> AsyncIterator[message_pb2.Message]:
        """Forward ``msg`` and yield its replies, each delivered to the user's stream."""
        self.inflight += 1
        try:
            async for reply in upstreams.forward(backend, msg):
                reply.context.reply_to = msg.id
                if not reply.context.conversation_id:
                    reply.context.conversation_id = msg.context.conversation_id
                set_time(reply, self.clock())
                yield self.hub.publish(identity.subject, reply)
        finally:
            self.inflight -= 1

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
