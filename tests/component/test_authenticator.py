"""JWKS through the gateway's own pieces: ``DialogService`` (authenticate, route scopes) and
``/health``, with keys in a real JWKS_FILE. The clock is injected; nothing sleeps."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from dialog.v1 import message_pb2
from gateway import metrics
from gateway.certs import create_dev_certs
from gateway.config import BackendConfig, GatewayConfig, RouteRule, RoutesConfig
from gateway.errors import PermissionDenied, Unauthenticated
from gateway.health import HealthMonitor
from gateway.http.app import build_app
from gateway.service import DialogService

T0 = 1_700_000_000.0
KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = "component-test-secret-" + "0" * 32


def jwks_file(path: Path, *kids: str) -> Path:
    keys = [{**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": kid} for kid in kids]
    path.write_text(json.dumps({"keys": keys}))
    return path


def es256(kid: str = "k1", **claims: Any) -> str:
    values = {"sub": "alice", "iat": int(T0), "exp": int(T0) + 600, **claims}
    return jwt.encode(values, KEY, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path, **overrides: Any) -> GatewayConfig:
    # Back-ends on a closed port: these tests admit messages, they never forward them.
    create_dev_certs(tmp_path / "certs")
    routes = RoutesConfig(
        backends=(BackendConfig("tasks", "127.0.0.1:9"), BackendConfig("chat", "127.0.0.1:9")),
        rules=(
            RouteRule(backend="tasks", service="tasks", scopes=("tasks:write",)),
            RouteRule(backend="chat", service="chat"),
        ),
        default_backend=None,
    )
    values: dict[str, Any] = {"jwks_file": "jwks.json", "routes": routes}
    values.update(overrides)
    return dataclasses.replace(GatewayConfig(), **values)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(tmp_path: Path, clock: Clock) -> AsyncIterator[DialogService]:
    jwks_file(tmp_path / "jwks.json", "k1")
    running = DialogService(config(tmp_path, jwt_secret=SECRET), base_dir=tmp_path, clock=clock)
    await running.start()
    yield running
    await running.close()


def failures(reason: str, surface: str = "test") -> float:
    value = metrics.REGISTRY.get_sample_value(
        "dialog_gateway_auth_failures_total", {"surface": surface, "reason": reason}
    )
    return value or 0.0


def message(service: str) -> message_pb2.Message:
    msg = message_pb2.Message(content=message_pb2.Content(type="text", text="hi"))
    msg.context.service = service
    return msg


async def test_jwks_and_hs256_tokens_both_authenticate(service: DialogService) -> None:
    assert (await service.access.authenticate(f"Bearer {es256()}", "test")).subject == "alice"
    hs = jwt.encode({"sub": "bob", "iat": int(T0), "exp": int(T0) + 60}, SECRET, "HS256")
    assert (await service.access.authenticate(f"Bearer {hs}", "test")).subject == "bob"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (lambda: es256("unknown"), "unknown_key"),
        (lambda: es256(exp=int(T0) + 7200), "ttl"),
        (lambda: es256(nbf=int(T0) + 600), "not_yet_valid"),
        (lambda: jwt.encode({"sub": "x", "exp": int(T0) + 60}, KEY, "ES256"), "unknown_key"),
    ],
    ids=["unknown kid", "too long", "not yet valid", "no kid"],
)
async def test_failures_are_counted_by_bounded_reason(
    service: DialogService, raw: Any, reason: str
) -> None:
    before = failures(reason)
    with pytest.raises(Unauthenticated):
        await service.access.authenticate(f"Bearer {raw()}", "test")
    assert failures(reason) == before + 1


async def test_a_route_refuses_a_token_without_its_scope(service: DialogService) -> None:
    reader = await service.access.authenticate(f"Bearer {es256(scope='tasks:read')}", "test")
    writer = await service.access.authenticate(f"Bearer {es256(scp=['tasks:write'])}", "test")
    before = failures("scope")
    with pytest.raises(PermissionDenied, match="missing scope: tasks:write") as info:
        await service.messages.admit(reader, message("tasks"), "test")
    assert info.value.http_status == 403
    assert failures("scope") == before + 1
    admission = await service.messages.admit(writer, message("tasks"), "test")
    assert admission.backend == "tasks"
    assert admission.stored.id
    assert (await service.messages.admit(reader, message("chat"), "test")).backend == "chat"


# ---------------------------------------------------------------------------
# /health
# ---------------------------------------------------------------------------


async def get_health(service: DialogService) -> httpx.Response:
    monitor = HealthMonitor(
        {}, {}, interval_ms=1000, timeout_ms=1000, ready=service.authenticator.jwks_available
    )
    app = build_app(service, monitor)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.get("/health")


async def test_health_reports_the_jwks(service: DialogService, tmp_path: Path) -> None:
    response = await get_health(service)
    assert response.status_code == 200
    jwks = response.json()["jwks"]
    assert (jwks["status"], jwks["source"], jwks["keys"]) == ("ok", "file", 1)


async def test_an_outage_with_last_good_keys_is_visible_but_healthy(
    service: DialogService, tmp_path: Path, clock: Clock
) -> None:
    (tmp_path / "jwks.json").unlink()
    clock.now += service.config.jwks_ttl_s
    assert (await service.access.authenticate(f"Bearer {es256()}", "test")).subject == "alice"
    response = await get_health(service)
    assert response.status_code == 200
    jwks = response.json()["jwks"]
    assert (jwks["status"], jwks["keys"]) == ("stale", 1)
    assert jwks["last_error"].startswith("cannot read the file")


async def test_no_keys_ever_loaded_is_unhealthy(tmp_path: Path, clock: Clock) -> None:
    service = DialogService(config(tmp_path), base_dir=tmp_path, clock=clock)
    await service.start()
    try:
        response = await get_health(service)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "NOT_SERVING"
        assert body["jwks"]["status"] == "unavailable"
    finally:
        await service.close()


async def test_without_jwks_health_has_no_jwks_entry(tmp_path: Path, clock: Clock) -> None:
    service = DialogService(
        config(tmp_path, jwks_file="", jwt_secret=SECRET), base_dir=tmp_path, clock=clock
    )
    await service.start()
    try:
        response = await get_health(service)
        assert "jwks" not in response.json()
    finally:
        await service.close()
