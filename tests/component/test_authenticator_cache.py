"""Tokens verified lately are not verified again on every call, but never past their
expiry, nor once the keys or settings that verified them changed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway import authenticator as authenticator_module
from gateway.auth import NO_KEYS, Identity, KeySet, TokenVerifier
from gateway.authenticator import VERIFIED_S, Authenticator
from gateway.config import GatewayConfig
from gateway.errors import Unauthenticated

T0 = 1_700_000_000.0
SECRET = "cache-secret-" + "0" * 40


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass(frozen=True)
class CountingVerifier(TokenVerifier):
    calls: list[str] = dataclasses.field(default_factory=list)

    def verify(self, token: str, *, now_s: float, keys: KeySet = NO_KEYS) -> Identity:
        self.calls.append(token)
        return super().verify(token, now_s=now_s, keys=keys)


def hs256(sub: str, exp_in_s: int = 600) -> str:
    claims = {"sub": sub, "iat": int(T0), "exp": int(T0) + exp_in_s}
    return jwt.encode(claims, SECRET, "HS256")


async def test_a_token_is_verified_once_then_again_after_a_while() -> None:
    clock = Clock()
    verifier = CountingVerifier(secret=SECRET, leeway_s=0)
    auth = Authenticator(verifier, clock=clock)
    token = hs256("alice")
    for _ in range(3):
        assert (await auth.authenticate(token)).subject == "alice"
    assert len(verifier.calls) == 1
    clock.now += VERIFIED_S
    await auth.authenticate(token)
    assert len(verifier.calls) == 2


async def test_a_remembered_token_is_refused_once_it_expires() -> None:
    clock = Clock()
    auth = Authenticator(TokenVerifier(secret=SECRET, leeway_s=0), clock=clock)
    token = hs256("bob", exp_in_s=10)
    await auth.authenticate(token)
    clock.now += 10
    with pytest.raises(Unauthenticated):
        await auth.authenticate(token)


async def test_a_refused_token_is_not_remembered() -> None:
    clock = Clock()
    verifier = CountingVerifier(secret=SECRET)
    auth = Authenticator(verifier, clock=clock)
    forged = jwt.encode({"sub": "eve", "iat": int(T0), "exp": int(T0) + 60}, "x" * 40, "HS256")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(forged)
    assert len(verifier.calls) == 2


async def test_the_number_of_remembered_tokens_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(authenticator_module, "VERIFIED_MAX", 3)
    verifier = CountingVerifier(secret=SECRET)
    auth = Authenticator(verifier, clock=Clock())
    tokens = [hs256(f"user-{i}") for i in range(4)]
    for token in tokens:
        await auth.authenticate(token)
    await auth.authenticate(tokens[0])  # the oldest was let go: verified again
    await auth.authenticate(tokens[3])  # the newest is still remembered
    assert verifier.calls == [*tokens, tokens[0]]


async def test_new_jwks_keys_verify_a_remembered_token_again(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [jwk]}))
    config = dataclasses.replace(GatewayConfig(), jwks_file="keys.json")
    auth = Authenticator.from_config(config, base_dir=tmp_path, clock=Clock())
    await auth.start()
    try:
        claims = {"sub": "carol", "iat": int(T0), "exp": int(T0) + 600}
        token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
        assert (await auth.authenticate(token)).subject == "carol"
        other = ec.generate_private_key(ec.SECP256R1())
        jwk2 = {**ECAlgorithm.to_jwk(other.public_key(), as_dict=True), "kid": "k2"}
        keys_file.write_text(json.dumps({"keys": [jwk2]}))  # k1 is withdrawn
        await auth._jwks.refresh("test")  # type: ignore[union-attr]
        with pytest.raises(Unauthenticated):
            await auth.authenticate(token)
    finally:
        await auth.close()
