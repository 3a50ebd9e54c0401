"""Asymmetric verification with JWKS keys (gateway.auth), no event loop, a fixed clock.

Keys are generated with ``cryptography``; tokens are signed with PyJWT, except the
forgeries PyJWT refuses to make (HS256 keyed with a public key PEM), which are built here
with ``hmac`` the way an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway import metrics
from gateway.auth import (
    Identity,
    KeySet,
    KeySetError,
    TokenVerifier,
    parse_jwks,
    require_scopes,
    token_scopes,
)
from gateway.errors import PermissionDenied, Unauthenticated

NOW = 1_700_000_000.0
LEEWAY_S = 30
MAX_TTL_S = 3600
ISSUER = "https://issuer.example"
AUDIENCE = "dialog"
SECRET = "unit-test-secret-" + "0123456789abcdef" * 3

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
P384_KEY = ec.generate_private_key(ec.SECP384R1())
ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

PRIVATE: dict[str, Any] = {"rsa-1": RSA_KEY, "rsa-2": RSA_KEY_2, "ec-1": EC_KEY, "ed-1": ED_KEY}
ALGORITHM = {"rsa-1": "RS256", "rsa-2": "RS256", "ec-1": "ES256", "ed-1": "EdDSA"}


def public_jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``private``, as an identity provider publishes it."""
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, **extra}


def jwks_document(*jwks: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(jwks)}).encode()


KEYS = parse_jwks(jwks_document(*(public_jwk(key, kid) for kid, key in PRIVATE.items())))
JWKS_ONLY = TokenVerifier(
    issuer=ISSUER, audience=AUDIENCE, leeway_s=LEEWAY_S, max_ttl_s=MAX_TTL_S, jwks=True
)
BOTH = TokenVerifier(
    SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=LEEWAY_S, max_ttl_s=MAX_TTL_S, jwks=True
)


def claims(**extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    values.update(extra)
    return {k: v for k, v in values.items() if v is not None}


def sign(
    kid: str | None = "rsa-1",
    *,
    key: Any = None,
    algorithm: str | None = None,
    headers: dict[str, Any] | None = None,
    **extra: Any,
) -> str:
    """A token signed with ``key`` (default: the private key of ``kid``)."""
    name = kid or "rsa-1"
    header = {"kid": kid} if kid is not None else {}
    header.update(headers or {})
    return jwt.encode(
        claims(**extra),
        key if key is not None else PRIVATE[name],
        algorithm=algorithm or ALGORITHM[name],
        headers=header,
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], key: bytes, **extra: Any) -> str:
    """An HS256 token keyed with any bytes (PyJWT refuses PEM keys as HMAC secrets)."""
    signing_input = (
        f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims(**extra)).encode())}"
    )
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned(header: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims()).encode())}."


RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def refused(verifier: TokenVerifier, token: str, keys: KeySet = KEYS) -> str:
    """The reason ``token`` is refused (a failure if it is accepted)."""
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token, now_s=NOW, keys=keys)
    assert not isinstance(info.value, jwt.PyJWTError)
    return info.value.message


# ---------------------------------------------------------------------------
# Accepted tokens and key selection
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["rsa-1", "rsa-2", "ec-1", "ed-1"])
def test_each_algorithm_verifies_with_its_key(kid: str) -> None:
    token = sign(kid, scope="messages:write")
    assert jwt.get_unverified_header(token)["alg"] == ALGORITHM[kid]
    assert JWKS_ONLY.verify(token, now_s=NOW, keys=KEYS) == Identity(
        subject="alice", scopes=frozenset({"messages:write"}), expires_at=float(int(NOW) + 300)
    )


def test_the_kid_selects_the_key() -> None:
    # Signed by rsa-2 but naming rsa-1: rsa-1 is used, and the signature does not match.
    assert refused(JWKS_ONLY, sign("rsa-1", key=RSA_KEY_2)) == "invalid token"
    assert JWKS_ONLY.verify(sign("rsa-2"), now_s=NOW, keys=KEYS).subject == "alice"


def test_an_unknown_kid_is_refused() -> None:
    assert refused(JWKS_ONLY, sign("rsa-3", key=RSA_KEY, algorithm="RS256")) == (
        "unknown signing key"
    )


def test_an_asymmetric_token_without_kid_is_refused() -> None:
    assert refused(JWKS_ONLY, sign(None)) == "token has no key id"
    assert refused(BOTH, sign(None)) == "token has no key id"


def test_without_jwks_an_asymmetric_token_is_an_algorithm_error() -> None:
    hs_only = TokenVerifier(SECRET, issuer=ISSUER, audience=AUDIENCE)
    assert refused(hs_only, sign("rsa-1")) == "token algorithm not allowed"


# ---------------------------------------------------------------------------
# The algorithm is pinned by the key, never taken from the token
# ---------------------------------------------------------------------------

NOT_ALLOWED = "token algorithm not allowed"
PINNED_CASES: list[tuple[str, Callable[[], str], str]] = [
    ("RS384 signed by the RSA key itself", lambda: sign("rsa-1", algorithm="RS384"), NOT_ALLOWED),
    ("PS256 with the RSA kid", lambda: sign("rsa-1", algorithm="PS256"), NOT_ALLOWED),
    ("ES384 with the EC kid", lambda: sign("ec-1", key=P384_KEY, algorithm="ES384"), NOT_ALLOWED),
    ("none with the RSA kid", lambda: unsigned({"alg": "none", "kid": "rsa-1"}), NOT_ALLOWED),
    ("None with the RSA kid", lambda: unsigned({"alg": "None", "kid": "rsa-1"}), NOT_ALLOWED),
    ("none without kid", lambda: unsigned({"alg": "none"}), NOT_ALLOWED),
    ("HS512 without kid", lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), NOT_ALLOWED),
    (
        "ES256 header with the RSA kid",
        lambda: sign("rsa-1", key=EC_KEY, algorithm="ES256"),
        "token algorithm does not match its key",
    ),
    (
        "RS256 header with the EC kid",
        lambda: sign("ec-1", key=RSA_KEY, algorithm="RS256"),
        "token algorithm does not match its key",
    ),
    (
        "EdDSA header with the RSA kid",
        lambda: sign("rsa-1", key=ED_KEY, algorithm="EdDSA"),
        "token algorithm does not match its key",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in PINNED_CASES], ids=[c[0] for c in PINNED_CASES]
)
def test_the_token_cannot_choose_the_algorithm(make: Callable[[], str], reason: str) -> None:
    assert refused(BOTH, make()) == reason


def test_hs256_keyed_with_the_public_key_pem_is_refused() -> None:
    """The classic RS→HS confusion: the public key is public, so it must never be an HMAC key."""
    with_kid = hand_signed({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, RSA_PUBLIC_PEM)
    without_kid = hand_signed({"alg": "HS256", "typ": "JWT"}, RSA_PUBLIC_PEM)
    assert refused(JWKS_ONLY, with_kid) == "token algorithm not allowed"
    assert refused(JWKS_ONLY, without_kid) == "token algorithm not allowed"
    assert refused(BOTH, with_kid) == "key id not allowed with HS256"
    # Without kid it goes to JWT_SECRET, and the signature does not match that.
    assert refused(BOTH, without_kid) == "invalid token"


def test_hs256_and_jwks_side_by_side() -> None:
    hs = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert BOTH.verify(hs, now_s=NOW, keys=KEYS).subject == "alice"
    assert BOTH.verify(sign("ec-1"), now_s=NOW, keys=KEYS).subject == "alice"
    # An HS256 token naming a kid is never verified with the secret.
    hs_with_kid = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "rsa-1"})
    assert refused(BOTH, hs_with_kid) == "key id not allowed with HS256"


def test_key_material_in_the_header_is_ignored() -> None:
    """jwk/jku/x5u/x5c in the header change nothing: the key comes from the key set."""
    attacker_jwk = public_jwk(ATTACKER_KEY, "rsa-1")
    injected = {
        "jwk": attacker_jwk,
        "jku": "http://127.0.0.1:9/jwks.json",
        "x5u": "http://127.0.0.1:9/cert.pem",
        "x5c": ["MIIBfake"],
    }
    forged = sign("rsa-1", key=ATTACKER_KEY, headers=injected)
    assert refused(JWKS_ONLY, forged) == "invalid token"
    forged_kid = sign("attacker", key=ATTACKER_KEY, algorithm="RS256", headers=injected)
    assert refused(JWKS_ONLY, forged_kid) == "unknown signing key"
    # A genuine token that also carries those headers is still accepted.
    assert JWKS_ONLY.verify(sign("rsa-1", headers=injected), now_s=NOW, keys=KEYS)


# ---------------------------------------------------------------------------
# typ
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"])
def test_typ_accepted(typ: str | None) -> None:
    token = sign("ec-1", headers={"typ": typ})
    assert JWKS_ONLY.verify(token, now_s=NOW, keys=KEYS).subject == "alice"


@pytest.mark.parametrize(
    "typ", ["id+jwt", "refresh+jwt", "JOSE+JSON", "JOSE", "logout+jwt", "dpop+jwt", 42, ["JWT"]]
)
def test_typ_refused(typ: Any) -> None:
    assert refused(BOTH, sign("ec-1", headers={"typ": typ})) == "token type not allowed"
    hs = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"typ": typ})
    assert refused(BOTH, hs) == "token type not allowed"


# ---------------------------------------------------------------------------
# Claims: lifetime cap, nbf, iat, exp, iss, aud
# ---------------------------------------------------------------------------

T = int(NOW)
CLAIM_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("lifetime at the cap", {"iat": T - 100, "exp": T - 100 + MAX_TTL_S}, None),
    ("lifetime over the cap", {"iat": T, "exp": T + MAX_TTL_S + 1}, "token lifetime too long"),
    ("old iat, long lifetime", {"iat": T - 7200, "exp": T + 60}, "token lifetime too long"),
    ("no iat, exp at cap + leeway", {"iat": None, "exp": T + MAX_TTL_S + LEEWAY_S}, None),
    (
        "no iat, exp over cap + leeway",
        {"iat": None, "exp": T + MAX_TTL_S + LEEWAY_S + 1},
        "token lifetime too long",
    ),
    ("nbf within the leeway", {"nbf": T + LEEWAY_S}, None),
    ("nbf beyond the leeway", {"nbf": T + LEEWAY_S + 1}, "token not yet valid"),
    ("iat in the future", {"iat": T + LEEWAY_S + 1, "exp": T + 600}, "token not yet valid"),
    ("exp within the leeway", {"iat": T - 100, "exp": T - LEEWAY_S + 1}, None),
    ("exp beyond the leeway", {"iat": T - 100, "exp": T - LEEWAY_S}, "token expired"),
    ("float NumericDates", {"iat": NOW - 0.5, "exp": NOW + 60.5, "nbf": NOW - 1.5}, None),
    ("exp missing", {"exp": None}, "invalid token"),
    ("exp is a string", {"exp": str(T + 60)}, "invalid token"),
    ("exp is a bool", {"exp": True}, "invalid token"),
    ("nbf is a string", {"nbf": "soon"}, "invalid token"),
    ("iat is huge", {"iat": 10**400}, "invalid token"),
    ("wrong issuer", {"iss": "https://other.example"}, "token issuer not accepted"),
    ("issuer with a trailing slash", {"iss": ISSUER + "/"}, "token issuer not accepted"),
    ("no issuer", {"iss": None}, "token issuer not accepted"),
    ("wrong audience", {"aud": "other"}, "token audience not accepted"),
    ("no audience", {"aud": None}, "token audience not accepted"),
    ("audience in a list", {"aud": ["other", AUDIENCE]}, None),
    ("no subject", {"sub": None}, "token has no subject"),
    ("empty subject", {"sub": ""}, "token has no subject"),
]


@pytest.mark.parametrize(
    ("extra", "reason"), [c[1:] for c in CLAIM_CASES], ids=[c[0] for c in CLAIM_CASES]
)
@pytest.mark.parametrize("kid", ["rsa-1", None], ids=["RS256", "HS256"])
def test_claims(kid: str | None, extra: dict[str, Any], reason: str | None) -> None:
    if kid is None:
        token = jwt.encode(claims(**extra), SECRET, algorithm="HS256")
    else:
        token = sign(kid, **extra)
    if reason is None:
        assert BOTH.verify(token, now_s=NOW, keys=KEYS).subject == "alice"
    else:
        assert refused(BOTH, token) == reason


def test_the_clock_is_the_callers() -> None:
    token = sign("ed-1", iat=T, exp=T + 60)
    assert JWKS_ONLY.verify(token, now_s=NOW + 60 + LEEWAY_S - 1, keys=KEYS)
    assert refused_at(token, NOW + 60 + LEEWAY_S) == "token expired"
    assert refused_at(token, NOW - LEEWAY_S - 1) == "token not yet valid"


def refused_at(token: str, now: float) -> str:
    with pytest.raises(Unauthenticated) as info:
        JWKS_ONLY.verify(token, now_s=now, keys=KEYS)
    return info.value.message


def test_every_refusal_has_a_bounded_metrics_reason() -> None:
    reasons = [c[2] for c in CLAIM_CASES if c[2]] + [c[2] for c in PINNED_CASES]
    reasons += [
        "token has no key id",
        "unknown signing key",
        "key id not allowed with HS256",
        "token type not allowed",
        "malformed token",
    ]
    for reason in reasons:
        assert metrics.auth_reason(reason) != "other", reason
    assert len(set(metrics.AUTH_REASONS.values())) <= 16


# ---------------------------------------------------------------------------
# Parsing a JWKS document: which keys are usable, and their pinned algorithm
# ---------------------------------------------------------------------------


def test_pinned_algorithms_come_from_the_key_type() -> None:
    assert {kid: KEYS.keys[kid].algorithm_name for kid in KEYS.kids} == ALGORITHM
    assert KEYS.skipped == ()


SKIP_CASES: list[tuple[str, dict[str, Any]]] = [
    ("RSA key declaring RS384", public_jwk(RSA_KEY, "k", alg="RS384")),
    ("RSA key declaring HS256", public_jwk(RSA_KEY, "k", alg="HS256")),
    ("RSA key declaring none", public_jwk(RSA_KEY, "k", alg="none")),
    ("EC P-384 key", public_jwk(P384_KEY, "k")),
    ("EC P-384 key declaring ES256", public_jwk(P384_KEY, "k", alg="ES256")),
    ("P-256 key declaring crv P-384", {**public_jwk(EC_KEY, "k"), "crv": "P-384"}),
    ("symmetric key", {"kty": "oct", "kid": "k", "k": b64url(SECRET.encode())}),
    ("no kid", {k: v for k, v in public_jwk(RSA_KEY, "k").items() if k != "kid"}),
    ("empty kid", public_jwk(RSA_KEY, "")),
    ("kid not a string", public_jwk(RSA_KEY, "k") | {"kid": 7}),
    ("use enc", public_jwk(RSA_KEY, "k", use="enc")),
    ("key_ops without verify", public_jwk(RSA_KEY, "k", key_ops=["encrypt"])),
    ("private key", RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True) | {"kid": "k"}),
    ("private Ed25519 key", OKPAlgorithm.to_jwk(ED_KEY, as_dict=True) | {"kid": "k"}),
    ("RSA 1024 bits", public_jwk(rsa.generate_private_key(65537, 1024), "k")),
    ("broken modulus", public_jwk(RSA_KEY, "k") | {"n": "!!!"}),
    ("missing coordinates", {"kty": "EC", "crv": "P-256", "kid": "k"}),
    ("unknown kty", {"kty": "XYZ", "kid": "k"}),
    ("kty not a string", {"kty": ["RSA"], "kid": "k"}),
    ("not an object", "a string"),  # type: ignore[dict-item]
]


@pytest.mark.parametrize("jwk", [c[1] for c in SKIP_CASES], ids=[c[0] for c in SKIP_CASES])
def test_unusable_keys_are_skipped(jwk: dict[str, Any]) -> None:
    keys = parse_jwks(jwks_document(jwk, public_jwk(EC_KEY, "good")))
    assert keys.kids == ("good",)
    assert len(keys.skipped) == 1


def test_an_explicit_matching_alg_and_use_sig_are_fine() -> None:
    keys = parse_jwks(
        jwks_document(
            public_jwk(RSA_KEY, "r", alg="RS256", use="sig", key_ops=["verify"]),
            public_jwk(EC_KEY, "e", alg="ES256"),
            public_jwk(ED_KEY, "d", alg="EdDSA"),
        )
    )
    assert keys.kids == ("d", "e", "r")


def test_a_duplicate_kid_keeps_the_first_key() -> None:
    keys = parse_jwks(jwks_document(public_jwk(RSA_KEY, "k"), public_jwk(RSA_KEY_2, "k")))
    assert keys.kids == ("k",)
    assert keys.skipped == ("kid 'k': duplicate",)
    assert JWKS_ONLY.verify(sign("k", key=RSA_KEY, algorithm="RS256"), now_s=NOW, keys=keys)


UNUSABLE_DOCUMENTS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"not json"),
    ("not utf-8", b"\xff\xfe"),
    ("a list", b"[]"),
    ("nested too deep", b"[" * 100_000),
    ("keys not a list", b'{"keys": {}}'),
    ("no keys", b'{"keys": []}'),
    ("no 'keys'", b'{"nokeys": 1}'),
    ("only unusable keys", jwks_document({"kty": "oct", "kid": "k", "k": "c2VjcmV0"})),
]


@pytest.mark.parametrize(
    "document", [c[1] for c in UNUSABLE_DOCUMENTS], ids=[c[0] for c in UNUSABLE_DOCUMENTS]
)
def test_an_unusable_document_is_an_error(document: bytes) -> None:
    with pytest.raises(KeySetError):
        parse_jwks(document)


# ---------------------------------------------------------------------------
# Scopes
# ---------------------------------------------------------------------------

SCOPE_CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("scope string", {"scope": "a b  c"}, {"a", "b", "c"}),
    ("scp list", {"scp": ["a", "b"]}, {"a", "b"}),
    ("scp string", {"scp": "a b"}, {"a", "b"}),
    ("both, united", {"scope": "a", "scp": ["b"]}, {"a", "b"}),
    ("none", {}, set()),
    ("scope as a list is not a scope claim", {"scope": ["a"]}, set()),
    ("malformed entries grant nothing", {"scp": ["a", 1, None, "", {"b": 1}]}, {"a"}),
    ("scope of another type", {"scope": 42}, set()),
]


@pytest.mark.parametrize(
    ("values", "expected"), [c[1:] for c in SCOPE_CASES], ids=[c[0] for c in SCOPE_CASES]
)
def test_token_scopes(values: dict[str, Any], expected: set[str]) -> None:
    assert token_scopes(values) == frozenset(expected)


def test_scopes_of_a_verified_token() -> None:
    token = sign("ec-1", scp=["tasks:write", "chat"])
    assert JWKS_ONLY.verify(token, now_s=NOW, keys=KEYS).scopes == {"tasks:write", "chat"}


def test_require_scopes() -> None:
    alice = Identity(subject="alice", scopes=frozenset({"a", "b"}), expires_at=NOW)
    require_scopes(alice, ())
    require_scopes(alice, ("a", "b"))
    with pytest.raises(PermissionDenied, match="missing scope: c"):
        require_scopes(alice, ("a", "c"))
    assert PermissionDenied.http_status == 403
    assert PermissionDenied.grpc_status == "PERMISSION_DENIED"
