"""The ``Authenticator`` every surface uses (through ``DialogService.authenticate``).

It feeds the pure ``TokenVerifier`` (gateway/auth.py) and, for a token that names a
``kid``, first awaits the JWKS key set (gateway/jwks.py), which may refetch it. The rules
for which key verifies which token are in gateway/auth.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.auth import NO_KEYS, Identity, TokenVerifier
from gateway.config import GatewayConfig
from gateway.jwks import FileSource, JwksCache, JwksSource, JwksStatus, UrlSource


class Authenticator:
    """Verifies bearer tokens: HS256 with ``JWT_SECRET``, RS256/ES256/EdDSA with JWKS keys.

    ``start`` loads the JWKS keys and starts their refresher; ``close`` stops it. Without
    ``start`` the keys are loaded on first use.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        jwks: JwksCache | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ):
        if verifier.jwks != (jwks is not None):
            raise ValueError("authenticator: the verifier and the JWKS cache disagree")
        self._verifier = verifier
        self._jwks = jwks
        self._clock = clock

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        base_dir: Path = Path("."),
        clock: Callable[[], float] = time.time,
    ) -> Authenticator:
        """The authenticator ``config`` describes (already validated by ``load_config``)."""
        source: JwksSource | None = None
        if config.jwks_file:
            path = Path(config.jwks_file)
            source = FileSource(path if path.is_absolute() else base_dir / path)
        elif config.jwks_url:
            source = UrlSource(config.jwks_url, timeout_s=config.jwks_timeout_ms / 1000)
        jwks = None
        if source is not None:
            jwks = JwksCache(
                source,
                ttl_s=config.jwks_ttl_s,
                refetch_cooldown_s=config.jwks_refetch_cooldown_s,
                timeout_s=config.jwks_timeout_ms / 1000,
                clock=clock,
            )
        verifier = TokenVerifier(
            secret=config.jwt_secret,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            leeway_s=config.jwt_leeway_s,
            max_ttl_s=config.max_token_ttl_s,
            jwks=jwks is not None,
        )
        return cls(verifier, jwks, clock=clock)

    async def start(self) -> None:
        if self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()

    async def authenticate(self, token: str) -> Identity:
        """The identity of ``token``, or ``Unauthenticated`` with a short, safe reason.

        A token with a ``kid`` waits (up to ``JWKS_TIMEOUT_MS`` per fetch) while the key
        set is refreshed when it is past its TTL or lacks that ``kid``.
        """
        header = self._verifier.check_header(token)
        keys = NO_KEYS
        if header.kid is not None and self._jwks is not None:
            keys = await self._jwks.keys_for(header.kid)
        return self._verifier.verify(token, now_s=self._clock(), keys=keys)

    def jwks_status(self) -> dict[str, Any] | None:
        """The ``jwks`` entry of ``/health``; ``None`` when no JWKS is configured."""
        return None if self._jwks is None else self._jwks.to_json()

    def jwks_available(self) -> bool:
        """False only when a JWKS is configured and no key set was ever loaded."""
        return self._jwks is None or self._jwks.status is not JwksStatus.UNAVAILABLE
