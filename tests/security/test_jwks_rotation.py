"""JWKS key rotation and outage, end to end: a gateway whose keys come from JWKS_URL, served by
a plain-HTTP server on 127.0.0.1 (allowed for a loopback address) that the tests change and
take down.

With ``JWKS_TTL_S=3`` and ``JWKS_REFETCH_COOLDOWN_S=1``: a key added to the set is accepted
once the cooldown since the last fetch has passed (an unknown ``kid`` triggers a refetch); a
key removed from the set is refused after the next TTL refresh; when the server goes down
the gateway keeps the last good keys and ``/health`` reports the set as ``stale``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.security.clients import TIMEOUT_S, post_message, recorded, text_message
from tests.security.jwt_forge import claims
from tests.security.key_server import KeyServer
from tests.support.stack import Stack, wait_until

TTL_S = 3
COOLDOWN_S = 1
JWKS_PATH = "/.well-known/jwks.json"
KEYS: dict[str, Any] = {
    "k1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "k2": ec.generate_private_key(ec.SECP256R1()),
}


def jwk(kid: str) -> dict[str, Any]:
    public = KEYS[kid].public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": kid}
    return {**ECAlgorithm.to_jwk(public, as_dict=True), "kid": kid}


def document(*kids: str) -> bytes:
    return json.dumps({"keys": [jwk(kid) for kid in kids]}).encode()


def token(kid: str, sub: str) -> str:
    alg = "RS256" if kid == "k1" else "ES256"
    return jwt.encode(claims(sub), KEYS[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def idp() -> Iterator[KeyServer]:
    server = KeyServer({JWKS_PATH: document("k1")}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory, idp: KeyServer) -> Iterator[Stack]:
    s = Stack.create(Path(tmp_path_factory.mktemp("jwks-rotation")))
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway(
            JWKS_URL=idp.url(JWKS_PATH),
            JWKS_TTL_S=str(TTL_S),
            JWKS_REFETCH_COOLDOWN_S=str(COOLDOWN_S),
            JWKS_TIMEOUT_MS="1000",
        )
        yield s
    finally:
        s.stop()


def accepted(stack: Stack, bearer_token: str) -> bool:
    """Whether the gateway accepts the token (``POST /ws-ticket``: no back-end involved)."""
    with httpx.Client(verify=stack.ssl_context(), timeout=TIMEOUT_S) as client:
        r = client.post(
            f"{stack.base_url}/ws-ticket", headers={"Authorization": f"Bearer {bearer_token}"}
        )
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def jwks_health(stack: Stack) -> tuple[int, dict[str, Any]]:
    with httpx.Client(verify=stack.ssl_context(), timeout=TIMEOUT_S) as client:
        r = client.get(f"{stack.base_url}/health")
    return r.status_code, r.json()["jwks"]


def wait_for_fetch_after(idp: KeyServer, moment: float, timeout_s: float) -> None:
    wait_until(
        lambda: any(at > moment for at in idp.fetch_times(JWKS_PATH)),
        timeout_s,
        "a JWKS fetch",
    )


def test_a_newly_added_key_is_accepted(rotating: Stack, idp: KeyServer) -> None:
    idp.serve(JWKS_PATH, document("k1"))
    assert not accepted(rotating, token("k2", "rot-new"))
    idp.serve(JWKS_PATH, document("k1", "k2"))
    # Let the refetch cooldown (counted from the last fetch of any kind) pass, on purpose, so
    # that the unknown kid may trigger a refetch; the TTL refresh is still two seconds away.
    last = max(idp.fetch_times(JWKS_PATH))
    time.sleep(max(0.0, last + COOLDOWN_S + 0.3 - time.time()))
    fetches = len(idp.fetch_times(JWKS_PATH))
    r = post_message(rotating, text_message("new key"), token=token("k2", "rot-new"))
    assert r.status_code == 200, r.text
    assert len(idp.fetch_times(JWKS_PATH)) > fetches
    assert [m["text"] for m in recorded(rotating, "rot-new")] == ["new key"]


def test_a_removed_key_is_refused_after_the_ttl(rotating: Stack, idp: KeyServer) -> None:
    idp.serve(JWKS_PATH, document("k1", "k2"))
    wait_until(lambda: accepted(rotating, token("k1", "rot-old")), 10, "k1 accepted")
    removed_at = time.time()
    idp.serve(JWKS_PATH, document("k2"))
    wait_for_fetch_after(idp, removed_at, TTL_S + 5)
    # The server has answered; the gateway parses the new set before it uses it.
    wait_until(lambda: not accepted(rotating, token("k1", "rot-old")), 5, "the new set in use")
    r = post_message(rotating, text_message("old key"), token=token("k1", "rot-old"))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    assert recorded(rotating, "rot-old") == []
    assert accepted(rotating, token("k2", "rot-old"))


def test_an_outage_keeps_the_last_good_keys_and_health_says_stale(
    rotating: Stack, idp: KeyServer
) -> None:
    idp.serve(JWKS_PATH, document("k1"))
    wait_until(lambda: not accepted(rotating, token("k2", "rot-down")), 10, "k2 removed")
    assert accepted(rotating, token("k1", "rot-down"))
    idp.stop()
    try:
        wait_until(lambda: jwks_health(rotating)[1]["status"] == "stale", TTL_S + 8, "stale")
        status, jwks = jwks_health(rotating)
        assert status == 200
        assert jwks["keys"] == 1
        assert jwks["last_error"] == "connection failed"
        r = post_message(rotating, text_message("still trusted"), token=token("k1", "rot-down"))
        assert r.status_code == 200, r.text
        assert [m["text"] for m in recorded(rotating, "rot-down")] == ["still trusted"]
        assert not accepted(rotating, token("k2", "rot-down"))
    finally:
        idp.start()
    wait_until(lambda: jwks_health(rotating)[1]["status"] == "ok", TTL_S + 8, "JWKS ok again")
