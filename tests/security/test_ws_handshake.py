"""WebSocket handshake abuse, written byte by byte on a TLS socket (RFC 6455 section 4).

A request that is not a WebSocket upgrade is plain HTTP (``/ws`` has no HTTP route: 404); a
broken upgrade is refused by the WebSocket layer (400, or 405 for another method) before the
application authenticates anything; an oversized head is 431. Subprotocols and origins follow
docs/protocol.md and RFC 6454: origins compare case-insensitively.
"""

from __future__ import annotations

import httpx
import pytest

from tests.security.clients import TIMEOUT_S, raw_tls, status_of
from tests.security.conftest import ORIGIN, Recorder
from tests.support.stack import Stack

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3, for KEY
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def handshake(
    stack: Stack,
    token: str,
    *,
    method: str = "GET",
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[int, str, bytes]:
    """Status, head (lower-cased) and body of the answer to a hand-written handshake."""
    headers = {k: v for k, v in UPGRADE.items() if k not in drop}
    headers.update(replace or {})
    lines = [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Authorization: Bearer {token}", *extra]
    data = f"{method} /ws HTTP/1.1\r\nHost: localhost\r\n" + "".join(f"{x}\r\n" for x in lines)
    answer = raw_tls(stack, (data + "\r\n").encode(), one_response=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    return status_of(answer), head.decode(errors="replace").lower(), body


def test_control_a_well_formed_handshake_is_101(guarded: Stack, attacker: Recorder) -> None:
    status, head, _ = handshake(guarded, guarded.token(attacker.user))
    assert status == 101
    assert f"sec-websocket-accept: {ACCEPT.lower()}" in head


@pytest.mark.parametrize(
    ("drop", "replace"),
    [(("Upgrade",), None), (("Connection",), None), ((), {"Upgrade": "h2c"})],
    ids=["no Upgrade", "no Connection", "Upgrade h2c"],
)
def test_a_request_that_is_not_an_upgrade_is_plain_http_404(
    guarded: Stack, attacker: Recorder, drop: tuple[str, ...], replace: dict[str, str] | None
) -> None:
    status, _, body = handshake(guarded, guarded.token(attacker.user), drop=drop, replace=replace)
    assert status == 404
    assert b'"not_found"' in body


BROKEN = {
    "version 12": ((), {"Sec-WebSocket-Version": "12"}, ()),
    "no version": (("Sec-WebSocket-Version",), None, ()),
    "no key": (("Sec-WebSocket-Key",), None, ()),
    "short key": ((), {"Sec-WebSocket-Key": "c2hvcnQ="}, ()),
    "key not base64": ((), {"Sec-WebSocket-Key": "!" * 24}, ()),
    "two keys": ((), None, (f"Sec-WebSocket-Key: {KEY}",)),
}


@pytest.mark.parametrize(("drop", "replace", "extra"), BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_upgrade_is_400(
    guarded: Stack,
    attacker: Recorder,
    drop: tuple[str, ...],
    replace: dict[str, str] | None,
    extra: tuple[str, ...],
) -> None:
    status, _, body = handshake(
        guarded, guarded.token(attacker.user), drop=drop, replace=replace, extra=extra
    )
    assert status == 400
    assert body.startswith(b"Failed to open a WebSocket connection: ")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_an_upgrade_with_another_method_is_405(
    guarded: Stack, attacker: Recorder, method: str
) -> None:
    status, head, _ = handshake(guarded, guarded.token(attacker.user), method=method)
    assert status == 405
    assert "allow: get" in head


def test_an_unknown_subprotocol_alone_is_accepted_without_one(
    guarded: Stack, attacker: Recorder
) -> None:
    # docs/protocol.md: dialog.v1.json is selected when the client offers it; otherwise the
    # server selects none (RFC 6455 section 4.2.2) and the client decides whether to go on.
    status, head, _ = handshake(
        guarded, guarded.token(attacker.user), extra=("Sec-WebSocket-Protocol: evil.v9",)
    )
    assert status == 101
    assert "sec-websocket-protocol" not in head


def test_dialog_subprotocol_is_selected_among_others(guarded: Stack, attacker: Recorder) -> None:
    status, head, _ = handshake(
        guarded,
        guarded.token(attacker.user),
        extra=("Sec-WebSocket-Protocol: evil.v9, dialog.v1.json",),
    )
    assert status == 101
    assert "sec-websocket-protocol: dialog.v1.json" in head


def test_an_oversized_handshake_is_431(guarded: Stack, attacker: Recorder) -> None:
    status, _, body = handshake(
        guarded, guarded.token(attacker.user), extra=("X-Padding: " + "p" * 6000,)
    )
    assert status == 431
    assert b'"request_header_too_large"' in body


# --- origins (RFC 6454: scheme and host compare case-insensitively; the port matters) -------


@pytest.mark.parametrize("origin", ["HTTPS://APP.EXAMPLE", "https://App.Example"])
def test_origin_in_another_case_is_accepted(
    guarded: Stack, attacker: Recorder, origin: str
) -> None:
    status, _, _ = handshake(guarded, guarded.token(attacker.user), extra=(f"Origin: {origin}",))
    assert status == 101
    with httpx.Client(verify=guarded.ssl_context(), timeout=TIMEOUT_S) as client:
        headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}", "Origin": origin}
        with client.stream("GET", f"{guarded.base_url}/events/stream", headers=headers) as r:
            assert r.status_code == 200


FOREIGN = [
    "http://app.example",
    "https://app.example:8443",
    "https://user@app.example",
    "https://app.example.",
    "https://evil.example/https://app.example",
]


@pytest.mark.parametrize("origin", FOREIGN)
def test_near_miss_origins_are_403(guarded: Stack, attacker: Recorder, origin: str) -> None:
    token = guarded.token(attacker.user)
    status, _, body = handshake(guarded, token, extra=(f"Origin: {origin}",))
    assert status == 403
    assert b'"permission_denied"' in body
    with httpx.Client(verify=guarded.ssl_context(), timeout=TIMEOUT_S) as client:
        r = client.get(
            f"{guarded.base_url}/events/stream",
            headers={"Authorization": f"Bearer {token}", "Origin": origin},
        )
    assert r.status_code == 403
    assert attacker.messages() == []


def test_origin_null_with_a_valid_ticket_on_sse_is_403_and_keeps_the_ticket(
    guarded: Stack, attacker: Recorder
) -> None:
    with httpx.Client(verify=guarded.ssl_context(), timeout=TIMEOUT_S) as client:
        issued = client.post(
            f"{guarded.base_url}/ws-ticket",
            headers={"Authorization": f"Bearer {guarded.token(attacker.user)}", "Origin": ORIGIN},
        )
        url = f"{guarded.base_url}/events/stream?ticket={issued.json()['ticket']}"
        refused = client.get(url, headers={"Origin": "null"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
        # The refusal came before the ticket was redeemed: its owner can still use it once.
        with client.stream("GET", url, headers={"Origin": ORIGIN}) as r:
            assert r.status_code == 200
