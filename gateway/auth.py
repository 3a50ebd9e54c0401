"""JWT verification, JWKS key sets, scopes and minting (pure: PyJWT does the parsing and crypto).

Which key verifies a token
    The header's ``alg`` and ``kid`` choose the key, and the algorithm is never taken from
    the token: each key has one pinned algorithm.

    * ``HS256`` without ``kid``: ``JWT_SECRET``, only when it is configured.
    * ``RS256``, ``ES256`` or ``EdDSA`` with a ``kid``: the JWKS key with that ``kid``, only
      when ``JWKS_FILE`` or ``JWKS_URL`` is configured. The header's ``alg`` must equal the
      key's pinned algorithm.
    * Everything else is refused: ``none``, every other algorithm (``HS384``, ``RS384``,
      ``PS256``, …), ``HS256`` with a ``kid`` (JWKS keys are never symmetric), and an
      asymmetric algorithm without a ``kid``.

    Header parameters that carry or point at a key (``jku``, ``x5u``, ``jwk``, ``x5c``) are
    ignored: keys come from the configuration only, and nothing here does I/O.

Pinned algorithm of a JWKS key (RFC 7517, RFC 7518 §6, RFC 8037)
    Derived from ``kty``/``crv``: RSA → RS256, EC P-256 → ES256, OKP Ed25519 → EdDSA. A key's
    own ``alg``, when present, must name that same algorithm. Other keys are skipped, as are
    keys without a ``kid``, keys whose ``use`` is not ``sig`` or whose ``key_ops`` lack
    ``verify``, keys with private members, and RSA keys under 2048 bits.

Claims
    ``exp`` is required; ``nbf`` and ``iat`` are checked when present; all three with
    ``leeway_s`` of clock skew, against ``now_s`` (the caller's clock: PyJWT's own time
    checks read the wall clock, so they are switched off). The lifetime is capped by
    ``max_ttl_s``: ``exp - iat``, or ``exp - now`` (plus the leeway) without ``iat``.
    ``iss`` must equal the issuer and ``aud`` must contain the audience when those are set.
    ``sub`` must be a non-empty string.

Token type (RFC 8725 §3.11, RFC 9068 §2.1)
    No ``typ``, or ``JWT``, ``at+jwt`` or ``application/at+jwt`` in any case. Any other type
    (``id+jwt``, ``refresh+jwt``, ``JOSE+JSON``, …) is refused: those tokens are not meant
    for this gateway.

Scopes
    The union of ``scope`` (space-separated string) and ``scp`` (a list of strings, or a
    space-separated string). Malformed entries grant nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.types import Options

from gateway.errors import InvalidMessage, PermissionDenied, Unauthenticated

SECRET_ALGORITHM = "HS256"
JWKS_ALGORITHMS = ("RS256", "ES256", "EdDSA")
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
BEARER = "bearer"
MAX_KID_CHARS = 256

# (kty, crv) → the one algorithm a key of that kind verifies; RSA keys have no crv.
_PINNED_ALGORITHMS = {
    ("RSA", None): "RS256",
    ("EC", "P-256"): "ES256",
    ("OKP", "Ed25519"): "EdDSA",
}
# RFC 7518 §6.2.2, §6.3.2, §6.4 and RFC 8037 §2: members only a private key has.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for; ``client`` is the verified client certificate's
    identity (``cert:<CN>``) when the connection presented one."""

    subject: str
    scopes: frozenset[str]
    expires_at: float
    client: str = ""


def encode_identity(identity: Identity) -> bytes:
    """``identity`` as bytes for the message store (a ticket stands for it)."""
    return json.dumps(
        {
            "sub": identity.subject,
            "scopes": sorted(identity.scopes),
            "exp": identity.expires_at,
            "client": identity.client,
        },
        separators=(",", ":"),
    ).encode()


def decode_identity(data: bytes) -> Identity:
    """The ``Identity`` that ``encode_identity`` wrote; ``ValueError`` for anything else."""
    try:
        fields = json.loads(data)
        subject, scopes = fields["sub"], fields["scopes"]
        expires_at, client = fields["exp"], fields["client"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError("not an encoded identity") from exc
    if not (
        isinstance(subject, str)
        and subject
        and isinstance(scopes, list)
        and all(isinstance(s, str) for s in scopes)
        and isinstance(expires_at, int | float)
        and not isinstance(expires_at, bool)
        and isinstance(client, str)
    ):
        raise ValueError("not an encoded identity")
    return Identity(subject, frozenset(scopes), float(expires_at), client)


class KeySetError(ValueError):
    """A JWKS document with no usable key at all; the message is short and safe to log."""


class _UnusableKey(ValueError):
    """One JWK that is skipped; the message says which and why."""


@dataclass(frozen=True)
class KeySet:
    """Verification keys by ``kid``, each with its pinned algorithm (``PyJWK.algorithm_name``).

    ``skipped`` says which keys of the document were left out, and why.
    """

    keys: Mapping[str, jwt.PyJWK] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self.keys.get(kid)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(sorted(self.keys))


NO_KEYS = KeySet()


def pinned_algorithm(jwk: Mapping[str, Any]) -> str:
    """The one algorithm ``jwk`` verifies, from its ``kty``/``crv``; its ``alg`` must agree."""
    kty = jwk.get("kty")
    crv = None if kty == "RSA" else jwk.get("crv")
    derived = None
    if isinstance(kty, str) and isinstance(crv, str | None):
        derived = _PINNED_ALGORITHMS.get((kty, crv))
    if derived is None:
        raise _UnusableKey(f"unsupported key type {kty!r}/{crv!r}")
    alg = jwk.get("alg")
    if alg is not None and alg != derived:
        raise _UnusableKey(f"alg {alg!r} does not fit key type {kty!r}/{crv!r}")
    return derived


def _load_key(jwk: Any) -> tuple[str, jwt.PyJWK]:
    if not isinstance(jwk, dict):
        raise _UnusableKey("a key is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        raise _UnusableKey("a key has no valid kid")
    try:
        if jwk.get("use", "sig") != "sig":
            raise _UnusableKey("use is not 'sig'")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise _UnusableKey("key_ops lack 'verify'")
        if any(member in jwk for member in _PRIVATE_MEMBERS):
            raise _UnusableKey("holds private key material")
        algorithm = pinned_algorithm(jwk)
        try:
            key = jwt.PyJWK(jwk, algorithm=algorithm)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise _UnusableKey("not a valid key") from exc
        if key.Algorithm.check_key_length(key.key):
            raise _UnusableKey("key too short")
    except _UnusableKey as exc:
        raise _UnusableKey(f"kid {kid!r}: {exc}") from exc
    return kid, key


def parse_jwks(document: bytes | str) -> KeySet:
    """The usable keys of a JWKS document (RFC 7517 §5); ``KeySetError`` when there are none.

    Unusable keys are skipped (see the module docstring); of two keys with one ``kid``, the
    first is kept.
    """
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for json
        raise KeySetError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeySetError("no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    skipped: list[str] = []
    for jwk in data["keys"]:
        try:
            kid, key = _load_key(jwk)
        except _UnusableKey as exc:
            skipped.append(str(exc))
            continue
        if kid in keys:
            skipped.append(f"kid {kid!r}: duplicate")
            continue
        keys[kid] = key
    if not keys:
        raise KeySetError("no usable keys")
    return KeySet(keys=keys, skipped=tuple(skipped))


@dataclass(frozen=True)
class TokenHeader:
    """The parts of an unverified JOSE header that choose the key."""

    alg: str
    kid: str | None


def read_header(token: str) -> TokenHeader:
    """The token's ``alg`` and ``kid``, after the ``typ`` rule; nothing is verified yet."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated("malformed token") from exc
    alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
    if not isinstance(alg, str):
        raise Unauthenticated("malformed token")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES):
        raise Unauthenticated("token type not allowed")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS):
        raise Unauthenticated("malformed token")
    return TokenHeader(alg=alg, kid=kid)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2) as a float, ``None`` when absent."""
    value = claims.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(name)
        number = float(value)
    except (TypeError, OverflowError):
        raise Unauthenticated("invalid token") from None
    if not math.isfinite(number):
        raise Unauthenticated("invalid token")
    return number


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The union of the ``scope`` and ``scp`` claims; malformed values grant nothing."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list) and name == "scp":
            found.update(item for item in value if isinstance(item, str) and item)
    return frozenset(found)


@dataclass(frozen=True)
class TokenVerifier:
    """Checks a token against the configured keys and claims (see the module docstring).

    ``secret`` enables HS256 (``JWT_SECRET``); ``jwks`` enables RS256/ES256/EdDSA with a key
    from the ``KeySet`` given to ``verify``.
    """

    secret: str = ""
    issuer: str = ""
    audience: str = ""
    leeway_s: int = 30
    max_ttl_s: int = 3600
    jwks: bool = False

    def check_header(self, token: str) -> TokenHeader:
        """The header, if its ``alg``/``kid`` pair names a configured kind of key.

        The shell calls this first: a JWKS token (``kid`` set) then needs the key set.
        """
        header = read_header(token)
        if header.alg == SECRET_ALGORITHM and self.secret:
            if header.kid is not None:
                raise Unauthenticated("key id not allowed with HS256")
        elif header.alg in JWKS_ALGORITHMS and self.jwks:
            if header.kid is None:
                raise Unauthenticated("token has no key id")
        else:
            raise Unauthenticated("token algorithm not allowed")
        return header

    def verify(self, token: str, *, now_s: float, keys: KeySet = NO_KEYS) -> Identity:
        """Return the token's identity or raise ``Unauthenticated`` with a short reason."""
        header = self.check_header(token)
        key: jwt.PyJWK | str = self.secret
        if header.kid is not None:
            found = keys.get(header.kid)
            if found is None:
                raise Unauthenticated("unknown signing key")
            if header.alg != found.algorithm_name:
                raise Unauthenticated("token algorithm does not match its key")
            key = found
        claims = self._decode(token, key, header.alg)
        return self._identity(claims, now_s)

    def _decode(self, token: str, key: jwt.PyJWK | str, algorithm: str) -> dict[str, Any]:
        options: Options = {
            "require": ["exp"],
            "verify_exp": False,  # checked in _identity against the caller's clock
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": bool(self.audience),
            "verify_iss": bool(self.issuer),
        }
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.issuer or None,
                audience=self.audience or None,
                options=options,
            )
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("token issuer not accepted") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("token audience not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            reason = {"iss": "token issuer not accepted", "aud": "token audience not accepted"}
            raise Unauthenticated(reason.get(exc.claim, "invalid token")) from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("invalid token") from exc

    def _identity(self, claims: Mapping[str, Any], now_s: float) -> Identity:
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        if exp is None:
            raise Unauthenticated("invalid token")
        # RFC 7519 §4.1.4-4.1.6, with the same leeway both ways.
        if exp <= now_s - self.leeway_s:
            raise Unauthenticated("token expired")
        if (nbf is not None and nbf > now_s + self.leeway_s) or (
            iat is not None and iat > now_s + self.leeway_s
        ):
            raise Unauthenticated("token not yet valid")
        # exp and iat come from the issuer's clock; without iat, ours is compared with
        # the issuer's, so the leeway applies.
        if iat is not None:
            too_long = exp - iat > self.max_ttl_s
        else:
            too_long = exp - now_s > self.max_ttl_s + self.leeway_s
        if too_long:
            raise Unauthenticated("token lifetime too long")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("token has no subject")
        return Identity(subject=subject, scopes=token_scopes(claims), expires_at=exp)


def require_scopes(identity: Identity, required: Iterable[str]) -> None:
    """Raise ``PermissionDenied`` unless ``identity`` holds every scope in ``required``."""
    missing = [scope for scope in required if scope not in identity.scopes]
    if missing:
        raise PermissionDenied(f"missing scope: {' '.join(missing)}")


def one_authorization(values: Sequence[str]) -> str | None:
    """The request's one ``Authorization`` value, or ``None``.

    A request that carries more than one is refused (RFC 6750, section 3.1): a proxy
    that read another of them would disagree with the gateway about who is calling.
    """
    if len(values) > 1:
        raise InvalidMessage("more than one Authorization header")
    return values[0] if values else None


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
