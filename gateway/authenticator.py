"""The ``Authenticator`` every surface uses (through ``Access.authenticate``, ``gateway.access``).

It feeds the pure ``TokenVerifier`` (gateway/auth.py) and, for a token that names a
``kid``, first awaits the JWKS key set (gateway/jwks.py), which may refetch it. The rules
for which key verifies which token are in gateway/auth.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.auth import NO_KEYS, Identity, KeySet, TokenVerifier
from gateway.config import ConfigError, GatewayConfig
from gateway.jwks import FileSource, JwksCache, JwksSource, JwksStatus, UrlSource

# Tokens verified lately, so that a client sending the same token with every call (a gRPC
# client, one POST after another) is not verified again each time: this many at most,
# each for this long at most, and never past its expiry.
VERIFIED_MAX = 10_000
VERIFIED_S = 30.0


@dataclass(frozen=True)
class _Verified:
    identity: Identity
    until_s: float
    # What verified it: a reload (new verifier) or new JWKS keys make it verify again.
    verifier: TokenVerifier
    keys: KeySet


class Authenticator:
    """Verifies bearer tokens: HS256 with ``JWT_SECRET``, RS256/ES256/EdDSA with JWKS keys.

    ``start`` loads the JWKS keys and starts their refresher; ``close`` stops it. Without
    ``start`` the keys are loaded on first use. A configuration reload builds a new one,
    ``load``s it, and the one in use ``adopt``s it (gateway/reload.py).
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
        self._verified: OrderedDict[str, _Verified] = OrderedDict()

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

    async def load(self) -> None:
        """Load the JWKS keys now, and start their refresher: the start of an authenticator
        built by a configuration reload. Raises ``ConfigError`` (and leaves nothing
        running) when the key set cannot be loaded or holds no usable key, so that the
        reload is rejected and the keys in force stay."""
        if self._jwks is None:
            return
        await self._jwks.refresh("reload")
        if self._jwks.status is JwksStatus.UNAVAILABLE or not len(self._jwks.keys):
            state = self._jwks.to_json()
            reason = state.get("last_error") or "no usable key"
            setting = "JWKS_FILE" if state.get("source") == "file" else "JWKS_URL"
            await self._jwks.close()
            raise ConfigError(f"{setting}: cannot load the token keys: {reason}")
        await self._jwks.start()

    async def adopt(self, newer: Authenticator) -> None:
        """Verify with ``newer``'s keys and settings from now on (a configuration reload;
        ``newer`` was loaded, and is not used after), then stop the key set this one had.
        The swap is one step: a token is verified wholly with the old keys or wholly with
        the new ones. This object stays the one every surface holds."""
        old = self._jwks
        self._verifier, self._jwks = newer._verifier, newer._jwks
        self._verified.clear()
        if old is not None and old is not self._jwks:
            await old.close()

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()

    async def authenticate(self, token: str) -> Identity:
        """The identity of ``token``, or ``Unauthenticated`` with a short, safe reason.

        A token with a ``kid`` waits (up to ``JWKS_TIMEOUT_MS`` per fetch) while the key
        set is refreshed when it is past its TTL or lacks that ``kid``.
        """
        # Both read once: a reload (``adopt``) during the wait for the keys does not mix them.
        verifier, jwks = self._verifier, self._jwks
        now_s = self._clock()
        seen = self._verified.get(token)
        if seen is not None and self._still_valid(seen, verifier, now_s):
            self._verified.move_to_end(token)
            return seen.identity
        header = verifier.check_header(token)
        keys = NO_KEYS
        if header.kid is not None and jwks is not None:
            keys = await jwks.keys_for(header.kid)
        identity = verifier.verify(token, now_s=now_s, keys=keys)
        until_s = min(now_s + VERIFIED_S, identity.expires_at)
        self._verified[token] = _Verified(identity, until_s, verifier, keys)
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return identity

    def _still_valid(self, seen: _Verified, verifier: TokenVerifier, now_s: float) -> bool:
        """A token verified lately, by the keys and settings in force now, and not expired."""
        if now_s >= seen.until_s or seen.verifier is not verifier:
            return False
        return seen.keys is NO_KEYS or (self._jwks is not None and self._jwks.keys is seen.keys)

    def jwks_status(self) -> dict[str, Any] | None:
        """The ``jwks`` entry of ``/health``; ``None`` when no JWKS is configured."""
        return None if self._jwks is None else self._jwks.to_json()

    def jwks_available(self) -> bool:
        """False only when a JWKS is configured and no key set was ever loaded."""
        return self._jwks is None or self._jwks.status is not JwksStatus.UNAVAILABLE
