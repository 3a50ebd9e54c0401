"""JWT verification and minting (pure: PyJWT does the cryptography and claim checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from gateway.errors import Unauthenticated

ALLOWED_ALGORITHMS = ("HS256",)
BEARER = "bearer"


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for."""

    subject: str
    scopes: frozenset[str]
    expires_at: float


@dataclass(frozen=True)
class TokenVerifier:
    """Checks HS256 tokens: signature, ``exp`` (required), ``iss``/``aud`` when set."""

    secret: str
    issuer: str = ""
    audience: str = ""
    leeway_s: int = 30

    def verify(self, token: str) -> Identity:
        """Return the token's identity or raise ``Unauthenticated`` with a reason."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("malformed token") from exc
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise Unauthenticated("token algorithm not allowed")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.secret,
                algorithms=list(ALLOWED_ALGORITHMS),
                issuer=self.issuer or None,
                audience=self.audience or None,
                leeway=self.leeway_s,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": bool(self.audience),
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("invalid token") from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("token has no subject")
        scope = claims.get("scope", "")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        return Identity(subject=subject, scopes=scopes, expires_at=float(claims["exp"]))


def bearer_token(header: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer`` header value."""
    if not header:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != BEARER or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'")
    return token.strip()


def mint_token(
    secret: str,
    subject: str,
    *,
    now_s: float,
    ttl_s: int,
    issuer: str = "",
    audience: str = "",
    scopes: tuple[str, ...] = (),
) -> str:
    """Create a short-lived HS256 token (for development and tests)."""
    claims: dict[str, Any] = {"sub": subject, "iat": int(now_s), "exp": int(now_s) + ttl_s}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, secret, algorithm="HS256")
