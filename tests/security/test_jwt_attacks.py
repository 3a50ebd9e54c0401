"""Forged, tampered, stale and malformed HS256 tokens against the guarded gateway.

Every forgery is refused with 401 (``unauthenticated``, ``WWW-Authenticate: Bearer``) and
nothing reaches the back-end; a control proves that the forging helpers build tokens the
gateway accepts when nothing is wrong with them. The guarded stack has ``JWT_LEEWAY_S=0``,
``MAX_TOKEN_TTL_S`` at its default (3600) and ``MAX_HEADER_BYTES=4096``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import grpc
import httpx
import pytest

from tests.security.clients import (
    bearer,
    grpc_send,
    post_message,
    raw_tls,
    recorded,
    status_of,
    text_message,
)
from tests.security.conftest import Recorder
from tests.security.jwt_forge import UNSET, b64url, claims, compact, segment
from tests.support.stack import Stack

HS = {"alg": "HS256", "typ": "JWT"}
YEAR_3000 = 32503680000

Forge = Callable[[Stack, str], str]


def signed(header: object = None, **overrides: object) -> Forge:
    """A token HMAC-signed with the stack's real secret; a callable override is given the
    current time when the token is made (so that "in the future" stays true)."""

    def forge(s: Stack, sub: str) -> str:
        now = int(time.time())
        values = {k: v(now) if callable(v) else v for k, v in overrides.items()}
        return compact(HS if header is None else header, claims(sub, **values), s.secret.encode())

    return forge


def alg_none(alg: str, *, with_signature: bool) -> Forge:
    """``alg: none`` (RFC 7518 section 3.6); optionally followed by the signature of the
    genuine HS256 token with the same claims (which the attacker may well hold)."""

    def forge(s: Stack, sub: str) -> str:
        payload = claims(sub)
        token = compact({"alg": alg, "typ": "JWT"}, payload, None)
        if with_signature:
            token += compact(HS, payload, s.secret.encode()).rsplit(".", 1)[1]
        return token

    return forge


def stripped(s: Stack, sub: str) -> str:
    return s.token(sub).rsplit(".", 1)[0] + "."


def borrowed_signature(s: Stack, sub: str) -> str:
    """The attacker's header and claims with the signature of someone else's valid token."""
    victim = s.token("victim-of-signature-reuse")
    return s.token(sub).rsplit(".", 1)[0] + "." + victim.rsplit(".", 1)[1]


def flipped_signature(s: Stack, sub: str) -> str:
    head, signature = s.token(sub).rsplit(".", 1)
    return f"{head}.{('A' if signature[0] != 'A' else 'B')}{signature[1:]}"


FORGERIES: dict[str, Forge] = {
    **{
        f"alg {alg}{' + signature' if sig else ''}": alg_none(alg, with_signature=sig)
        for alg in ("none", "None", "NONE", "nOnE")
        for sig in (False, True)
    },
    "stripped signature": stripped,
    "signature of another token": borrowed_signature,
    "one signature character changed": flipped_signature,
    "another secret": lambda s, sub: s.token(sub, secret="not-the-gateway-secret-" + "x" * 32),
    "HS512 with the real secret": lambda s, sub: compact(
        {"alg": "HS512"}, claims(sub), s.secret.encode(), hashlib.sha512
    ),
    "HS384 with the real secret": lambda s, sub: compact(
        {"alg": "HS384"}, claims(sub), s.secret.encode(), hashlib.sha384
    ),
    "RS256 header, HMAC signature": signed({"alg": "RS256"}),
    "HS256 with a kid": signed({"alg": "HS256", "kid": "default"}),
    "no alg": signed({"typ": "JWT"}),
    "unknown critical header": signed({"alg": "HS256", "crit": ["x-dialog"], "x-dialog": 1}),
    # Time claims (RFC 7519 section 4.1.4-4.1.6); the guarded stack has no leeway.
    "expired": signed(iat=lambda t: t - 120, exp=lambda t: t - 60),
    "nbf in the future": signed(nbf=lambda t: t + 120),
    "iat in the future": signed(iat=lambda t: t + 120, exp=lambda t: t + 600),
    "exp as a string": signed(exp=lambda t: str(t + 600)),
    "exp true": signed(exp=True),
    "exp NaN": signed(exp=float("nan")),
    "exp in the year 3000": signed(exp=YEAR_3000),
    "exp in the year 3000 without iat": signed(iat=UNSET, exp=YEAR_3000),
    "lifetime over MAX_TOKEN_TTL_S": signed(iat=lambda t: t - 3500, exp=lambda t: t + 600),
    "no exp": signed(exp=UNSET),
    "nbf as a string": signed(nbf=lambda t: str(t - 10)),
    # Subject.
    "no sub": signed(sub=UNSET),
    "empty sub": signed(sub=""),
    "sub a number": signed(sub=42),
    "sub a list": signed(sub=["root"]),
    # Issuer, audience and type (RFC 8725 section 3.8-3.11).
    "wrong iss": signed(iss="https://evil.example"),
    "iss with a trailing space": signed(iss="dialog-gateway "),
    "iss in another case": signed(iss="Dialog-Gateway"),
    "no iss": signed(iss=UNSET),
    "aud list without ours": signed(aud=["other", "dialog2"]),
    "aud in another case": signed(aud="Dialog"),
    "no aud": signed(aud=UNSET),
    "typ id+jwt": signed({"alg": "HS256", "typ": "id+jwt"}),
    "typ refresh+jwt": signed({"alg": "HS256", "typ": "refresh+jwt"}),
    "typ 'JWT ' with a space": signed({"alg": "HS256", "typ": "JWT "}),
    "typ a number": signed({"alg": "HS256", "typ": 1}),
    # Malformed compact serializations.
    "two segments": lambda s, sub: s.token(sub).rsplit(".", 1)[0],
    "four segments": lambda s, sub: s.token(sub) + ".e30",
    "not base64url": lambda s, sub: "!!!.@@@.###",
    "header not JSON": lambda s, sub: compact(b"not json", claims(sub), s.secret.encode()),
    "payload not JSON": lambda s, sub: compact(HS, b"not json", s.secret.encode()),
    "header a JSON array": lambda s, sub: compact([1], claims(sub), s.secret.encode()),
    "payload a JSON array": lambda s, sub: compact(HS, [claims(sub)], s.secret.encode()),
    "junk after the token": lambda s, sub: s.token(sub) + " junk",
}


def assert_refused_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthenticated"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_control_the_forging_helpers_build_accepted_tokens(
    guarded: Stack, attacker: Recorder
) -> None:
    for forge in (signed(), signed({"alg": "HS256", "typ": "at+jwt"}), signed(aud=["x", "dialog"])):
        r = post_message(guarded, text_message("control"), token=forge(guarded, attacker.user))
        assert r.status_code == 200, r.text
    assert len(attacker.messages()) == 3


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_token_is_refused_over_http(
    guarded: Stack, attacker: Recorder, forge: Forge
) -> None:
    r = post_message(guarded, text_message("forged"), token=forge(guarded, attacker.user))
    assert_refused_401(r)
    assert attacker.messages() == []


@pytest.mark.parametrize(
    "value",
    ["", "Bearer", "Bearer .", "Basic dXNlcjpwYXNz", "Token abc.def.ghi", "Bearer\tabc"],
    ids=["empty", "scheme only", "a dot", "basic", "other scheme", "tab"],
)
def test_malformed_authorization_values_are_refused(
    guarded: Stack, attacker: Recorder, value: str
) -> None:
    r = post_message(guarded, text_message("x"), headers={"Authorization": value})
    assert_refused_401(r)
    assert attacker.messages() == []


SURFACE_SAMPLE = [
    "alg none",
    "alg nOnE + signature",
    "stripped signature",
    "expired",
    "wrong iss",
    "typ id+jwt",
    "exp in the year 3000",
]


@pytest.mark.parametrize("name", SURFACE_SAMPLE)
async def test_forged_token_is_refused_over_grpc(
    guarded: Stack, attacker: Recorder, name: str
) -> None:
    result = await grpc_send(guarded, bearer(FORGERIES[name](guarded, attacker.user)))
    assert result.code == grpc.StatusCode.UNAUTHENTICATED
    assert result.replies == []
    assert attacker.messages() == []


def ws_handshake(stack: Stack, *header_lines: str) -> bytes:
    head = (
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + "".join(f"{line}\r\n" for line in header_lines)
        + "\r\n"
    )
    return raw_tls(stack, head.encode(), one_response=True)


@pytest.mark.parametrize("name", SURFACE_SAMPLE)
def test_forged_token_is_refused_at_the_websocket_handshake(
    guarded: Stack, attacker: Recorder, name: str
) -> None:
    answer = ws_handshake(
        guarded, f"Authorization: Bearer {FORGERIES[name](guarded, attacker.user)}"
    )
    assert status_of(answer) == 401, answer[:200]
    assert b'"unauthenticated"' in answer


# --- oversized tokens: the request head limit answers before authentication -----------------


def oversized(s: Stack, sub: str) -> str:
    return compact(HS, claims(sub, pad="p" * 20000), s.secret.encode())


def test_oversized_token_over_http_is_431(guarded: Stack, attacker: Recorder) -> None:
    r = post_message(guarded, text_message("big"), token=oversized(guarded, attacker.user))
    assert r.status_code == 431
    assert r.json()["error"]["code"] == "request_header_too_large"
    assert attacker.messages() == []


def test_oversized_token_at_the_websocket_handshake_is_431(
    guarded: Stack, attacker: Recorder
) -> None:
    answer = ws_handshake(guarded, f"Authorization: Bearer {oversized(guarded, attacker.user)}")
    assert status_of(answer) == 431, answer[:200]


async def test_oversized_token_over_grpc_is_resource_exhausted(
    guarded: Stack, attacker: Recorder
) -> None:
    # grpc core's hard limit on received metadata (16 KiB) refuses it before the servicer.
    result = await grpc_send(guarded, bearer(oversized(guarded, attacker.user)))
    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert attacker.messages() == []


# --- more than one credential: RFC 6750 section 3.1 ("invalid_request": a request that
# repeats a parameter or uses more than one method of carrying the token) -> 400 -----------


def two_authorizations(first: str, second: str) -> bytes:
    body = b'{"content":{"type":"text","text":"two credentials"}}'
    return (
        b"POST /messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        + f"Authorization: Bearer {first}\r\nAuthorization: Bearer {second}\r\n".encode()
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@pytest.mark.parametrize("order", ["valid first", "invalid first"])
def test_two_authorization_headers_valid_and_invalid_are_refused(
    guarded: Stack, attacker: Recorder, order: str
) -> None:
    valid = guarded.token(attacker.user)
    invalid = guarded.token(attacker.user, secret="not-the-gateway-secret-" + "x" * 32)
    pair = (valid, invalid) if order == "valid first" else (invalid, valid)
    answer = raw_tls(guarded, two_authorizations(*pair))
    assert status_of(answer) == 400, answer[:300]
    assert attacker.messages() == []


def test_two_authorization_headers_for_two_users_are_refused(
    guarded: Stack, attacker: Recorder
) -> None:
    other = f"{attacker.user}-other"
    answer = raw_tls(
        guarded, two_authorizations(guarded.token(attacker.user), guarded.token(other))
    )
    assert status_of(answer) == 400, answer[:300]
    assert attacker.messages() == []
    assert recorded(guarded, other) == []


def test_two_authorization_headers_at_the_websocket_handshake_are_refused(
    guarded: Stack, attacker: Recorder
) -> None:
    answer = ws_handshake(
        guarded,
        f"Authorization: Bearer {guarded.token(attacker.user)}",
        f"Authorization: Bearer {guarded.token(attacker.user + '-other')}",
    )
    assert status_of(answer) == 400, answer[:300]


@pytest.mark.parametrize("order", ["valid first", "invalid first"])
async def test_two_authorization_metadata_entries_over_grpc_are_refused(
    guarded: Stack, attacker: Recorder, order: str
) -> None:
    valid = f"Bearer {guarded.token(attacker.user)}"
    invalid = "Bearer " + b64url(b"x") + "." + segment({}) + "."
    pair = (valid, invalid) if order == "valid first" else (invalid, valid)
    result = await grpc_send(guarded, (("authorization", pair[0]), ("authorization", pair[1])))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT, result
    assert attacker.messages() == []
