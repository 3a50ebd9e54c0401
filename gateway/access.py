"""Who may call the gateway, and how much: ``Access``.

Authentication with its failures counted by reason, single-use WebSocket tickets, the
browser origins allowed (``ALLOWED_ORIGINS``) and the CORS policy, the time left on a
token, and the per-user limits: the sliding-window rate limit and the count of open
WebSocket connections, both kept in the message store so that every replica shares them.
``DialogService`` holds one (``DialogService.access``); surfaces call it before any work.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence

from gateway import metrics
from gateway.auth import (
    Identity,
    bearer_token,
    decode_identity,
    encode_identity,
    one_authorization,
)
from gateway.authenticator import Authenticator
from gateway.config import GatewayConfig
from gateway.errors import PermissionDenied, RateLimited, StoreUnavailable, Unauthenticated
from gateway.origins import origin_allowed, parse_allowed_origins
from gateway.store import Store
from gateway.tickets import TICKET_BYTES, ticket_lifetime_s, well_formed
from gateway.transcode.cors import CorsPolicy


def _cors_policy(config: GatewayConfig) -> CorsPolicy:
    """Who may call from a browser: ``ALLOWED_ORIGINS``, and the request headers clients
    send (the back-ends' ``forward_metadata`` among them)."""
    forwarded = (name for b in config.routes.backends for name in b.forward_metadata)
    return CorsPolicy.of(parse_allowed_origins(config.allowed_origins), forwarded)


class Access:
    """The access decisions of the gateway process.

    ``store`` returns the open message store (raising ``StoreUnavailable`` before it is
    open). The settings are read from ``config`` at use time, so a reload
    (``apply_config``) applies at once.
    """

    def __init__(
        self,
        config: GatewayConfig,
        authenticator: Authenticator,
        *,
        store: Callable[[], Store],
        clock: Callable[[], float],
    ):
        self.config = config
        self._authenticator = authenticator
        self.cors = _cors_policy(config)
        self._store = store
        self._clock = clock

    def apply_config(self, config: GatewayConfig) -> None:
        """Take a reloaded configuration: its settings and its CORS policy."""
        self.cors = _cors_policy(config)
        self.config = config

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
            return await self._authenticator.authenticate(token)
        except Unauthenticated as exc:
            self._count_auth_failure(exc, surface)
            raise

    @staticmethod
    def _count_auth_failure(exc: Unauthenticated, surface: str) -> None:
        reason = metrics.auth_reason(exc.message)
        metrics.AUTH_FAILURES.labels(surface=surface, reason=reason).inc()

    async def rate_limit(self, identity: Identity, surface: str) -> None:
        """Count one message (or proxied gRPC call) in the user's sliding window, shared by
        every surface and replica; over ``RATE_LIMIT_MAX`` per window, raise ``RateLimited``."""
        retry_after = await self._store().rate_acquire(
            identity.subject,
            self.config.rate_limit_max,
            self.config.rate_limit_window_s,
            self._clock(),
        )
        if retry_after is not None:
            metrics.RATE_LIMITED.labels(surface=surface, limit="messages").inc()
            raise RateLimited("too many messages; slow down", retry_after_s=retry_after)

    async def open_ws(self, identity: Identity) -> bool:
        """Count a WebSocket connection of the user unless ``MAX_WS_CONN`` are open (on
        every replica, with a shared store)."""
        return await self._store().conn_open(identity.subject, self.config.max_ws_conn)

    async def close_ws(self, identity: Identity) -> None:
        store = self._store()
        with contextlib.suppress(StoreUnavailable):
            await store.conn_close(identity.subject)

    def remaining_s(self, identity: Identity) -> float:
        """Seconds until the identity's token expires, leeway included."""
        return identity.expires_at + self.config.jwt_leeway_s - self._clock()

    def check_origin(self, origin: str | None) -> None:
        """Refuse a browser ``Origin`` that is not on ``ALLOWED_ORIGINS``."""
        if not origin_allowed(origin, self.cors.origins):
            raise PermissionDenied("this origin is not allowed")

    async def issue_ticket(self, identity: Identity) -> tuple[str, float]:
        """A single-use ticket standing for ``identity``, and its lifetime in seconds. It
        is kept in the message store, so any worker or replica redeems it."""
        store = self._store()
        ttl_s = ticket_lifetime_s(identity, self.config.ws_ticket_ttl_s, self._clock())
        if ttl_s <= 0:
            raise Unauthenticated("the token has expired")
        ticket = secrets.token_urlsafe(TICKET_BYTES)
        if not await store.ticket_put(ticket, encode_identity(identity), ttl_s):
            raise RateLimited("too many outstanding tickets; try again shortly", retry_after_s=1)
        return ticket, ttl_s

    async def redeem_ticket(self, ticket: str, surface: str) -> Identity:
        """The identity behind a ticket; an unknown, used or expired one is refused alike."""
        store = self._store()
        value = await store.ticket_take(ticket) if well_formed(ticket) else None
        try:
            identity = decode_identity(value) if value is not None else None
        except ValueError:
            identity = None
        if identity is None:
            metrics.AUTH_FAILURES.labels(surface=surface, reason="ticket").inc()
            raise Unauthenticated("invalid or expired ticket")
        return identity
