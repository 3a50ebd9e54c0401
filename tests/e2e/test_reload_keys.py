"""Token keys follow the configuration reloads, end to end: a key rotation is a SIGHUP.

The keys come from a JWKS_FILE (the same path, new contents) or from ``jwt_secret`` in
config/gateway.json. The JWKS TTL and refetch cooldown are an hour, so that only the reload
can bring new keys in. A key file that does not load rejects the whole reload: the routes
of the same reload are not applied either, and the old keys stay.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.messages import post
from tests.support.stack import AUDIENCE, ISSUER, Process, Stack, wait_until

TIMEOUT_S = 20
APPLIED = "configuration reloaded"
REJECTED = "configuration reload rejected"
KEYS = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
SLOW_JWKS = {"JWKS_TTL_S": "3600", "JWKS_REFETCH_COOLDOWN_S": "3600", "CONFIG_WATCH_MS": "0"}


def write_jwks(path: Path, *kids: str) -> None:
    keys = [{**ECAlgorithm.to_jwk(KEYS[k].public_key(), as_dict=True), "kid": k} for k in kids]
    path.write_text(json.dumps({"keys": keys}))


def es256(kid: str) -> str:
    now = int(time.time())
    claims = {"sub": f"rotation-{kid}", "iat": now, "exp": now + 600}
    return jwt.encode(
        {**claims, "iss": ISSUER, "aud": AUDIENCE}, KEYS[kid], "ES256", headers={"kid": kid}
    )


def accepted(stack: Stack, token: str) -> bool:
    """Whether the gateway accepts the token (``POST /ws-ticket``: no back-end involved)."""
    with httpx.Client(verify=stack.ssl_context(), timeout=TIMEOUT_S) as client:
        r = client.post(f"{stack.base_url}/ws-ticket", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


async def sighup(gateway: Process, log_line: str) -> str:
    """SIGHUP the gateway and return its next ``log_line``."""
    seen = gateway.log().count(log_line)
    os.kill(gateway.popen.pid, signal.SIGHUP)
    await asyncio.to_thread(
        wait_until, lambda: gateway.log().count(log_line) > seen, TIMEOUT_S, log_line
    )
    assert gateway.popen.poll() is None, gateway.log()
    return [line for line in gateway.log().splitlines() if log_line in line][seen]


@pytest.fixture
def jwks_stack(tmp_path: Path) -> Iterator[tuple[Stack, Process]]:
    stack = Stack.create(tmp_path)
    write_jwks(stack.workdir / "keys.json", "k1")
    try:
        stack.start_backends()
        gateway = stack.start_gateway(JWT_SECRET="", JWKS_FILE="keys.json", **SLOW_JWKS)
        yield stack, gateway
    finally:
        stack.stop()


async def test_a_rotated_jwks_file_is_in_force_after_a_sighup(
    jwks_stack: tuple[Stack, Process],
) -> None:
    stack, gateway = jwks_stack
    keys = stack.workdir / "keys.json"
    assert accepted(stack, es256("k1"))
    assert not accepted(stack, es256("k2"))

    write_jwks(keys, "k2")
    assert not accepted(stack, es256("k2")), "the new key was in force before the reload"
    line = await sighup(gateway, APPLIED)
    assert "token keys reloaded" in line, line
    assert accepted(stack, es256("k2"))
    assert not accepted(stack, es256("k1"))

    # A key kept in the set stays valid through the rotation.
    write_jwks(keys, "k1", "k2")
    await sighup(gateway, APPLIED)
    assert accepted(stack, es256("k1")) and accepted(stack, es256("k2"))
    # A reload that finds the same file does not load the keys again.
    line = await sighup(gateway, APPLIED)
    assert "token keys reloaded" not in line, line


async def test_a_bad_jwks_file_rejects_the_whole_reload_and_the_old_keys_stay(
    jwks_stack: tuple[Stack, Process],
) -> None:
    stack, gateway = jwks_stack
    routes_file = stack.workdir / "config" / "routes.json"
    routes: dict[str, Any] = json.loads(routes_file.read_text())
    assert not any(r["service"] == "spare-tasks" for r in routes["rules"])
    routes["rules"].append({"service": "spare-tasks", "backend": "tasks"})
    routes_file.write_text(json.dumps(routes))
    (stack.workdir / "keys.json").write_text('{"keys": [')

    line = await sighup(gateway, REJECTED)
    assert "JWKS_FILE: cannot load the token keys" in line, line
    assert accepted(stack, es256("k1"))
    assert not accepted(stack, es256("k2"))
    body = {"content": {"type": "task.list"}, "context": {"service": "spare-tasks"}}
    r = await asyncio.to_thread(post, stack, es256("k1"), body)
    # The rule of the rejected reload is not in force.
    assert r.status_code == 404 and r.json()["error"]["code"] == "unimplemented", r.text

    write_jwks(stack.workdir / "keys.json", "k2")
    line = await sighup(gateway, APPLIED)
    assert "token keys reloaded" in line, line
    assert accepted(stack, es256("k2"))


class SecretFileStack(Stack):
    """A stack whose gateway reads ``jwt_secret`` from config/gateway.json (not from the
    environment, which would override the file)."""

    def env(self, **overrides: str) -> dict[str, str]:
        env = super().env(**overrides)
        env.pop("JWT_SECRET", None)
        return env


async def test_a_new_jwt_secret_in_gateway_json_is_in_force_after_a_sighup(
    tmp_path: Path,
) -> None:
    stack = SecretFileStack.create(tmp_path)
    settings_file = stack.workdir / "config" / "gateway.json"
    settings = json.loads(settings_file.read_text())
    old, new = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    settings_file.write_text(json.dumps({**settings, "jwt_secret": old}))
    try:
        stack.start_backends()
        gateway = stack.start_gateway(CONFIG_WATCH_MS="0")
        assert accepted(stack, stack.token(secret=old))
        assert not accepted(stack, stack.token(secret=new))

        settings_file.write_text(json.dumps({**settings, "jwt_secret": new}))
        line = await sighup(gateway, APPLIED)
        assert "token keys reloaded" in line, line
        assert "needs a restart" not in line, line
        assert accepted(stack, stack.token(secret=new))
        assert not accepted(stack, stack.token(secret=old))
    finally:
        stack.stop()


def test_a_rewritten_jwks_file_is_reloaded_without_a_signal(tmp_path: Path) -> None:
    """With CONFIG_WATCH_MS, the JWKS file is one of the files checked: writing it is enough."""
    stack = Stack.create(tmp_path)
    keys = stack.workdir / "keys.json"
    write_jwks(keys, "k1")
    try:
        stack.start_backends()
        gateway = stack.start_gateway(
            JWT_SECRET="", JWKS_FILE="keys.json", **{**SLOW_JWKS, "CONFIG_WATCH_MS": "200"}
        )
        assert not accepted(stack, es256("k2"))
        staged = stack.workdir / "keys.json.new"
        write_jwks(staged, "k2")
        staged.replace(keys)  # in one step, as docs/mesh.md advises
        wait_until(lambda: "token keys reloaded" in gateway.log(), TIMEOUT_S, "the reload")
        assert accepted(stack, es256("k2"))
        assert not accepted(stack, es256("k1"))
    finally:
        stack.stop()
