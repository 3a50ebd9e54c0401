"""Key confusion and key-selection abuse against a gateway whose only keys are a JWKS file.

The gateway here has no ``JWT_SECRET``: its keys are an RSA key (``rsa-1``) and an EC P-256
key (``ec-1``) from ``JWKS_FILE``. The classic RS256-to-HS256 confusion (an HMAC keyed with
the public key, RFC 8725 section 2.1) is tried with the public key in every usual encoding,
with and without the key's ``kid``; ``kid`` values that aim at paths, queries or other keys;
and tokens whose header carries or points at the attacker's own key (``jku``, ``x5u``, ``jwk``,
``x5c``), which the gateway must ignore without fetching anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.security.clients import post_message, recorded, text_message
from tests.security.jwt_forge import claims, compact, rs256
from tests.security.key_server import KeyServer
from tests.support.stack import Stack

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_JWK: dict[str, Any] = {
    **RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True),
    "kid": "rsa-1",
    "use": "sig",
    "alg": "RS256",
}
EC_JWK: dict[str, Any] = {**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "ec-1"}
ATTACKER_JWK: dict[str, Any] = {
    **RSAAlgorithm.to_jwk(ATTACKER_KEY.public_key(), as_dict=True),
    "kid": "attacker-1",
}


@pytest.fixture(scope="module")
def jwks_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.create(Path(tmp_path_factory.mktemp("jwks-only")))
    jwks_file = s.workdir / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [RSA_JWK, EC_JWK]}))
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway(JWKS_FILE=str(jwks_file), JWT_SECRET="", JWT_LEEWAY_S="0")
        yield s
    finally:
        s.stop()


def self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dialog-gateway")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


ATTACKER_CERT = self_signed(ATTACKER_KEY)


@pytest.fixture(scope="module")
def attacker_keys() -> Iterator[KeyServer]:
    """The attacker's key server: its JWKS and certificate, for ``jku`` and ``x5u``."""
    server = KeyServer(
        {
            "/jwks.json": json.dumps({"keys": [ATTACKER_JWK]}).encode(),
            "/cert.pem": ATTACKER_CERT.public_bytes(serialization.Encoding.PEM),
        }
    ).start()
    yield server
    server.stop()


def subject(request: pytest.FixtureRequest) -> str:
    return f"kc-{request.node.name}"[:120]


def assert_refused(stack: Stack, token: str, sub: str) -> None:
    r = post_message(stack, text_message("forged"), token=token)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthenticated"
    assert recorded(stack, sub) == []


@pytest.mark.parametrize(
    ("key", "alg", "kid"), [(RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")]
)
def test_control_tokens_signed_with_the_jwks_keys_are_accepted(
    jwks_only: Stack, request: pytest.FixtureRequest, key: Any, alg: str, kid: str
) -> None:
    sub = subject(request)
    token = jwt.encode(claims(sub), key, algorithm=alg, headers={"kid": kid})
    r = post_message(jwks_only, text_message("genuine"), token=token)
    assert r.status_code == 200, r.text
    assert len(recorded(jwks_only, sub)) == 1


PUBLIC = RSA_KEY.public_key()
PEM, DER = serialization.Encoding.PEM, serialization.Encoding.DER
SPKI, PKCS1 = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1
HMAC_KEYS = {
    "PEM SPKI": PUBLIC.public_bytes(PEM, SPKI),
    "PEM SPKI without the final newline": PUBLIC.public_bytes(PEM, SPKI).rstrip(b"\n"),
    "PEM PKCS1": PUBLIC.public_bytes(PEM, PKCS1),
    "DER SPKI": PUBLIC.public_bytes(DER, SPKI),
    "DER PKCS1": PUBLIC.public_bytes(DER, PKCS1),
    "JWK JSON": json.dumps(RSA_JWK).encode(),
    "base64url n": RSA_JWK["n"].encode(),
    "raw modulus": PUBLIC.public_numbers().n.to_bytes(256, "big"),
}


@pytest.mark.parametrize("kid", [None, "rsa-1"], ids=["no kid", "the RSA kid"])
@pytest.mark.parametrize("encoding", HMAC_KEYS)
def test_hs256_keyed_with_the_rsa_public_key_is_refused(
    jwks_only: Stack, request: pytest.FixtureRequest, encoding: str, kid: str | None
) -> None:
    sub = subject(request)
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    assert_refused(jwks_only, compact(header, claims(sub), HMAC_KEYS[encoding]), sub)


KIDS: dict[str, Any] = {
    "path traversal": "../../etc/passwd",
    "absolute path": "/dev/null",
    "SQL": "' OR 1=1 --",
    "10 KB": "k" * 10240,
    "the EC key's kid": "ec-1",
    "null": None,
    "a number": 1,
    "empty": "",
    "a list": ["rsa-1"],
    "NUL suffix": "rsa-1\x00",
    "another case": "RSA-1",
    "trailing space": "rsa-1 ",
}


@pytest.mark.parametrize("kid", KIDS.values(), ids=KIDS.keys())
def test_rs256_with_an_abusive_kid_is_refused(
    jwks_only: Stack, request: pytest.FixtureRequest, kid: Any
) -> None:
    # Signed with the real RSA key: only the kid is wrong.
    sub = subject(request)
    assert_refused(jwks_only, rs256({"alg": "RS256", "kid": kid}, claims(sub), RSA_KEY), sub)


def test_es256_with_the_rsa_keys_kid_is_refused(
    jwks_only: Stack, request: pytest.FixtureRequest
) -> None:
    sub = subject(request)
    token = jwt.encode(claims(sub), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"})
    assert_refused(jwks_only, token, sub)


def embedded_key(parameter: str, server: KeyServer) -> Any:
    return {
        "jku": server.url("/jwks.json"),
        "x5u": server.url("/cert.pem"),
        "jwk": ATTACKER_JWK,
        "x5c": [base64.b64encode(ATTACKER_CERT.public_bytes(DER)).decode()],
    }[parameter]


@pytest.mark.parametrize("kid", ["attacker-1", "rsa-1"])
@pytest.mark.parametrize("parameter", ["jku", "x5u", "jwk", "x5c"])
def test_keys_carried_or_named_by_the_token_are_ignored(
    jwks_only: Stack,
    attacker_keys: KeyServer,
    request: pytest.FixtureRequest,
    parameter: str,
    kid: str,
) -> None:
    sub = subject(request)
    header = {"alg": "RS256", "kid": kid, parameter: embedded_key(parameter, attacker_keys)}
    assert_refused(jwks_only, rs256(header, claims(sub), ATTACKER_KEY), sub)
    assert attacker_keys.requests == []
