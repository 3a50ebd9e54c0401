"""HS256 verification, minting and the Bearer header (gateway.auth), no event loop.

The verifier takes the clock as an argument: every token here is minted and checked at
the fixed ``NOW``. The JWKS algorithms are in test_auth_jwks.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import Identity, TokenVerifier, bearer_token, mint_token
from gateway.errors import Unauthenticated

SECRET = "unit-test-secret-" + "0123456789abcdef" * 3  # 65 bytes: long enough for HS512
OTHER_SECRET = "other-secret-" + "fedcba9876543210" * 3
ISSUER = "dialog-gateway"
AUDIENCE = "dialog-clients"
LEEWAY_S = 30
NOW = 1_700_000_000.0

VERIFIER = TokenVerifier(SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=LEEWAY_S)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(now: float, **extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "alice",
        "iat": int(now),
        "exp": int(now) + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def _hs(now: float, algorithm: str = "HS256", key: str = SECRET, **extra: Any) -> str:
    return jwt.encode(_claims(now, **extra), key, algorithm=algorithm)


def _unsigned(now: float, alg: str = "none") -> str:
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(_claims(now)).encode())
    return f"{header}.{payload}."


def _rs256(now: float) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(_claims(now), key, algorithm="RS256")


def _mint(
    now: float,
    *,
    secret: str = SECRET,
    ttl_s: int = 300,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
) -> str:
    return mint_token(secret, "alice", now_s=now, ttl_s=ttl_s, issuer=issuer, audience=audience)


def test_verify_accepts_a_minted_token() -> None:
    now = NOW
    token = mint_token(
        SECRET,
        "alice",
        now_s=now,
        ttl_s=300,
        issuer=ISSUER,
        audience=AUDIENCE,
        scopes=("messages:write", "events:read"),
    )
    assert VERIFIER.verify(token, now_s=NOW) == Identity(
        subject="alice",
        scopes=frozenset({"messages:write", "events:read"}),
        expires_at=float(int(now) + 300),
    )


def test_verify_without_scopes_gives_an_empty_set() -> None:
    now = NOW
    identity = VERIFIER.verify(_mint(now), now_s=now)
    assert identity.scopes == frozenset()
    assert identity.subject == "alice"


def test_verifier_without_issuer_or_audience_accepts_plain_tokens() -> None:
    now = NOW
    token = mint_token(SECRET, "bob", now_s=now, ttl_s=60)
    assert TokenVerifier(SECRET).verify(token, now_s=now).subject == "bob"


# (name, token factory given now; these must all raise Unauthenticated)
REJECT_CASES = [
    ("expired beyond the leeway", lambda now: _mint(now - 600, ttl_s=600 - LEEWAY_S - 30)),
    ("wrong secret", lambda now: _mint(now, secret=OTHER_SECRET)),
    ("wrong issuer", lambda now: _mint(now, issuer="someone-else")),
    ("no issuer", lambda now: _mint(now, issuer="")),
    ("wrong audience", lambda now: _mint(now, audience="someone-else")),
    ("no audience", lambda now: _mint(now, audience="")),
    ("missing exp", lambda now: _hs(now, exp=None)),
    ("missing sub", lambda now: _hs(now, sub=None)),
    ("empty sub", lambda now: _hs(now, sub="")),
    ("sub is not a string", lambda now: _hs(now, sub=42)),
    ("exp is not a number", lambda now: _hs(now, exp="tomorrow")),
    ("not yet valid (nbf)", lambda now: _hs(now, nbf=int(now) + 200)),
    ("alg none", lambda now: _unsigned(now, "none")),
    ("alg None", lambda now: _unsigned(now, "None")),
    ("alg HS256 without a signature", lambda now: _unsigned(now, "HS256")),
    ("HS384 with the same secret", lambda now: _hs(now, algorithm="HS384")),
    ("HS512 with the same secret", lambda now: _hs(now, algorithm="HS512")),
    ("RS256 (algorithm switching)", _rs256),
    ("garbage", lambda now: "garbage"),
    ("empty string", lambda now: ""),
    ("three garbage segments", lambda now: "a.b.c"),
    ("tampered payload", lambda now: _tamper(_mint(now))),
]


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    return ".".join([header, _b64url(json.dumps(claims).encode()), signature])


@pytest.mark.parametrize("make", [c[1] for c in REJECT_CASES], ids=[c[0] for c in REJECT_CASES])
def test_verify_rejects(make: Any) -> None:
    token = make(NOW)
    with pytest.raises(Unauthenticated) as info:
        VERIFIER.verify(token, now_s=NOW)
    # Converted where it enters: the PyJWT exception is only the cause.
    assert not isinstance(info.value, jwt.PyJWTError)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda now: _mint(now - 600, ttl_s=500), "expired"),
        (lambda now: _hs(now, algorithm="HS512"), "algorithm"),
        (lambda now: _unsigned(now), "algorithm"),
        (_rs256, "algorithm"),
        (lambda now: "garbage", "malformed"),
    ],
    ids=["expired", "HS512", "alg none", "RS256", "garbage"],
)
def test_verify_reason(make: Any, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        VERIFIER.verify(make(NOW), now_s=NOW)


@pytest.mark.parametrize(
    ("expired_s_ago", "accepted"),
    [
        (LEEWAY_S - 20, True),  # within the leeway
        (-60, True),  # not expired at all
        (LEEWAY_S + 60, False),  # beyond the leeway
    ],
    ids=["within leeway", "valid", "beyond leeway"],
)
def test_verify_leeway(expired_s_ago: int, accepted: bool) -> None:
    now = NOW
    token = _hs(now, iat=int(now) - 600, exp=int(now) - expired_s_ago)
    if accepted:
        assert VERIFIER.verify(token, now_s=NOW).subject == "alice"
    else:
        with pytest.raises(Unauthenticated):
            VERIFIER.verify(token, now_s=NOW)


def test_mint_token_claims() -> None:
    token = mint_token(
        SECRET, "carol", now_s=1000.9, ttl_s=60, issuer=ISSUER, audience=AUDIENCE, scopes=("a",)
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims == {
        "sub": "carol",
        "iat": 1000,
        "exp": 1060,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "scope": "a",
    }


# ---------------------------------------------------------------------------
# bearer_token
# ---------------------------------------------------------------------------

BEARER_OK = [
    ("Bearer abc.def.ghi", "abc.def.ghi"),
    ("bearer x", "x"),
    ("BEARER x", "x"),
    ("BeArEr x", "x"),
    ("  Bearer x  ", "x"),
]


@pytest.mark.parametrize(("header", "token"), BEARER_OK)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header", [None, "", "   ", "Basic x", "Bearer ", "Bearer", "Bearerx", "Token x"]
)
def test_bearer_token_rejects(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(header)
