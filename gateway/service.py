"""The path every surface shares: authenticate, admit, route, forward, deliver.

Surfaces (gRPC, HTTP, WebSocket) only translate their transport into calls on
``DialogService`` and carry out what it returns.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from dialog.v1 import message_pb2
from gateway import metrics
from gateway.auth import Identity, TokenVerifier, bearer_token
from gateway.config import GatewayConfig
from gateway.errors import RateLimited, Unauthenticated
from gateway.events import EventHub
from gateway.forwarding import Upstreams
from gateway.ratelimit import ConnectionCounter, SlidingWindow
from gateway.routing import RouteTable
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
        self.verifier = TokenVerifier(
            secret=config.jwt_secret,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            leeway_s=config.jwt_leeway_s,
        )
        self.rate_limit = SlidingWindow(config.rate_limit_max, config.rate_limit_window_s)
        self.ws_connections = ConnectionCounter(config.max_ws_conn)
        self.routes = RouteTable.from_config(config.routes)
        self.hub = EventHub(queue_max=config.outbound_queue_max)
        self.pool = BackendPool(
            config.routes, max_message_bytes=config.max_message_bytes, base_dir=base_dir
        )

    async def close(self) -> None:
        await self.pool.close()

    async def authenticate(self, authorization: str | None, surface: str) -> Identity:
        """Verify an ``Authorization`` header value; count failures by reason."""
        try:
            return self.verifier.verify(bearer_token(authorization))
        except Unauthenticated as exc:
            metrics.AUTH_FAILURES.labels(
                surface=surface, reason=metrics.auth_reason(exc.message)
            ).inc()
            raise

    def admit(
        self, identity: Identity, msg: message_pb2.Message, surface: str
    ) -> tuple[message_pb2.Message, str]:
        """Rate-limit, stamp and route a client message; deliver it to the user's stream.

        Returns the stored message (with id, timestamp and seq) and its back-end.
        """
        retry_after = self.rate_limit.acquire(identity.subject, self.clock())
        if retry_after is not None:
            metrics.RATE_LIMITED.labels(surface=surface, limit="messages").inc()
            raise RateLimited("too many messages; slow down", retry_after_s=retry_after)
        stored = accept_client_message(msg, now_s=self.clock(), new_id=new_id)
        backend = self.routes.match(stored)
        self.hub.publish(identity.subject, stored)
        metrics.MESSAGES.labels(surface=surface, backend=backend).inc()
        return stored, backend

    def upstreams(self, identity: Identity) -> Upstreams:
        """Back-end streams for one client connection."""
        return Upstreams(
            self.pool, identity.subject, reply_queue_max=self.config.outbound_queue_max
        )

    async def replies(
        self, upstreams: Upstreams, identity: Identity, backend: str, msg: message_pb2.Message
    ) -> AsyncIterator[message_pb2.Message]:
        """Forward ``msg`` and yield its replies, each delivered to the user's stream."""
        async for reply in upstreams.forward(backend, msg):
            reply.context.reply_to = msg.id
            if not reply.context.conversation_id:
                reply.context.conversation_id = msg.context.conversation_id
            set_time(reply, self.clock())
            yield self.hub.publish(identity.subject, reply)
