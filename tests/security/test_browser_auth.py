"""Browser WebSocket and SSE authentication: tickets and the Origin allowlist."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.security.conftest import ORIGIN, Recorder
from tests.support.stack import Stack


def ticket(stack: Stack, token: str, origin: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if origin:
        headers["Origin"] = origin
    with httpx.Client(verify=stack.ssl_context(), timeout=10) as c:
        return c.post(f"{stack.base_url}/ws-ticket", headers=headers)


async def ws_status(stack: Stack, url: str, **headers: str) -> int:
    """The HTTP status of a refused handshake (101 when it is accepted)."""
    try:
        async with connect(
            url, ssl=stack.ssl_context(), additional_headers=headers, open_timeout=10
        ):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_ticket_opens_one_websocket_once(guarded: Stack, attacker: Recorder) -> None:
    r = ticket(guarded, guarded.token(attacker.user), ORIGIN)
    assert r.status_code == 200
    value = r.json()["ticket"]
    assert 0 < r.json()["expires_in_s"] <= 30
    url = f"{guarded.ws_url}?ticket={value}"
    async with connect(url, ssl=guarded.ssl_context(), additional_headers={"Origin": ORIGIN}) as ws:
        await ws.send(json.dumps({"id": "t1", "content": {"type": "text", "text": "via ticket"}}))
        frames = [json.loads(await ws.recv()) for _ in range(2)]
    assert frames[1]["content"]["text"] == "via ticket"
    assert await ws_status(guarded, url, Origin=ORIGIN) == 401
    assert [m["id"] for m in attacker.messages()] == ["t1"]


@pytest.mark.parametrize("value", ["", "x", "A" * 43, "../../etc/passwd"])
async def test_unknown_tickets_are_refused(guarded: Stack, value: str) -> None:
    assert await ws_status(guarded, f"{guarded.ws_url}?ticket={value}") == 401


def test_ticket_works_for_event_source(guarded: Stack, attacker: Recorder) -> None:
    value = ticket(guarded, guarded.token(attacker.user), ORIGIN).json()["ticket"]
    with httpx.Client(verify=guarded.ssl_context(), timeout=10) as c:
        url = f"{guarded.base_url}/events/stream?ticket={value}"
        with c.stream("GET", url, headers={"Origin": ORIGIN}) as r:
            assert r.status_code == 200
        again = c.get(url, headers={"Origin": ORIGIN})
    assert again.status_code == 401


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://app.example.evil"])
async def test_foreign_origins_are_refused_at_the_handshake(
    guarded: Stack, attacker: Recorder, origin: str
) -> None:
    token = guarded.token(attacker.user)
    status = await ws_status(
        guarded, guarded.ws_url, Authorization=f"Bearer {token}", Origin=origin
    )
    assert status == 403
    async with httpx.AsyncClient(verify=guarded.ssl_context(), timeout=10) as c:
        sse = await c.get(
            f"{guarded.base_url}/events/stream",
            headers={"Authorization": f"Bearer {token}", "Origin": origin},
        )
    assert sse.status_code == 403
    assert ticket(guarded, token, origin).status_code == 403
    assert attacker.messages() == []


async def test_allowed_origin_and_no_origin_are_let_through(guarded: Stack) -> None:
    token = guarded.token()
    assert (
        await ws_status(guarded, guarded.ws_url, Authorization=f"Bearer {token}", Origin=ORIGIN)
        == 101
    )
    assert await ws_status(guarded, guarded.ws_url, Authorization=f"Bearer {token}") == 101


def test_cors_preflight_for_the_allowed_origin_only(guarded: Stack) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with httpx.Client(verify=guarded.ssl_context(), timeout=10) as c:
        ok = c.options(f"{guarded.base_url}/ws-ticket", headers={**preflight, "Origin": ORIGIN})
        bad = c.options(
            f"{guarded.base_url}/ws-ticket", headers={**preflight, "Origin": "https://evil.example"}
        )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in bad.headers


@pytest.mark.parametrize("param", ["token", "access_token", "jwt", "auth"])
async def test_tokens_in_the_url_are_refused(
    guarded: Stack, attacker: Recorder, param: str
) -> None:
    token = guarded.token(attacker.user)
    assert await ws_status(guarded, f"{guarded.ws_url}?{param}={token}") == 400
    gateway = next(p for p in guarded.processes if p.name == "gateway")
    assert token not in gateway.log()
