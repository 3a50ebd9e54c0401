"""The token keys of a configuration reload (``Authenticator.load`` and ``adopt``), with a
real JWKS file: keys that do not load are refused before anything changes, and the
authenticator every surface holds swaps to the new keys in one step. The clock is injected."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.authenticator import Authenticator
from gateway.config import ConfigError, GatewayConfig
from gateway.errors import Unauthenticated

T0 = 1_700_000_000.0
KEYS = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
OLD_SECRET = "old-secret-" + "0" * 40
NEW_SECRET = "new-secret-" + "1" * 40


def write_jwks(path: Path, *kids: str) -> None:
    keys = [{**ECAlgorithm.to_jwk(KEYS[k].public_key(), as_dict=True), "kid": k} for k in kids]
    path.write_text(json.dumps({"keys": keys}))


def es256(kid: str) -> str:
    claims = {"sub": f"user-{kid}", "iat": int(T0), "exp": int(T0) + 600}
    return jwt.encode(claims, KEYS[kid], algorithm="ES256", headers={"kid": kid})


def hs256(secret: str) -> str:
    return jwt.encode({"sub": "bob", "iat": int(T0), "exp": int(T0) + 60}, secret, "HS256")


def config(**values: Any) -> GatewayConfig:
    return dataclasses.replace(GatewayConfig(), **values)


def refreshers() -> int:
    return sum(t.get_name() == "jwks-refresher" for t in asyncio.all_tasks())


async def accepted(authenticator: Authenticator, token: str) -> bool:
    try:
        await authenticator.authenticate(token)
    except Unauthenticated:
        return False
    return True


async def test_a_key_file_that_does_not_load_is_refused_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    (tmp_path / "keys.json").write_text('{"keys": [')
    candidate = Authenticator.from_config(
        config(jwks_file="keys.json"), base_dir=tmp_path, clock=lambda: T0
    )
    with pytest.raises(ConfigError, match="JWKS_FILE: cannot load the token keys: invalid"):
        await candidate.load()
    assert refreshers() == 0

    write_jwks(tmp_path / "keys.json")  # valid, and empty: no usable key
    candidate = Authenticator.from_config(
        config(jwks_file="keys.json"), base_dir=tmp_path, clock=lambda: T0
    )
    with pytest.raises(ConfigError, match="no usable key"):
        await candidate.load()
    assert refreshers() == 0


async def test_adopting_new_keys_swaps_them_in_one_step(tmp_path: Path) -> None:
    write_jwks(tmp_path / "old.json", "k1")
    write_jwks(tmp_path / "new.json", "k2")
    in_use = Authenticator.from_config(
        config(jwks_file="old.json", jwks_refetch_cooldown_s=3600),
        base_dir=tmp_path,
        clock=lambda: T0,
    )
    await in_use.start()
    try:
        assert await accepted(in_use, es256("k1"))
        assert not await accepted(in_use, es256("k2"))
        candidate = Authenticator.from_config(
            config(jwks_file="new.json"), base_dir=tmp_path, clock=lambda: T0
        )
        await candidate.load()
        assert refreshers() == 2
        # Loaded, not yet adopted: the keys in force are still the old ones.
        assert not await accepted(in_use, es256("k2"))

        await in_use.adopt(candidate)
        assert refreshers() == 1  # the old key set's refresher stopped
        assert await accepted(in_use, es256("k2"))
        assert not await accepted(in_use, es256("k1"))
        assert in_use.jwks_available()
    finally:
        await in_use.close()
    assert refreshers() == 0


async def test_adopting_a_new_secret_and_claims(tmp_path: Path) -> None:
    in_use = Authenticator.from_config(config(jwt_secret=OLD_SECRET), clock=lambda: T0)
    await in_use.start()
    assert await accepted(in_use, hs256(OLD_SECRET))
    candidate = Authenticator.from_config(
        config(jwt_secret=NEW_SECRET, jwt_issuer="https://issuer.example"), clock=lambda: T0
    )
    await candidate.load()  # nothing to load without a JWKS
    await in_use.adopt(candidate)
    assert not await accepted(in_use, hs256(OLD_SECRET))
    # The claims rules came with it: the new secret, without the issuer, is refused.
    assert not await accepted(in_use, hs256(NEW_SECRET))
    claims = {"sub": "bob", "iat": int(T0), "exp": int(T0) + 60, "iss": "https://issuer.example"}
    assert await accepted(in_use, jwt.encode(claims, NEW_SECRET, "HS256"))
    await in_use.close()
