"""The JWKS cache and the Authenticator against a real HTTP server on 127.0.0.1.

The server (``http.server`` on its own thread) counts every request it receives, so the
tests can assert how often the gateway fetched. Time never passes by sleeping: the cache
and the verifier share an injected clock that the tests advance. The only waits are the
JWKS deadline itself (a server that holds its answer) and the fetches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway import metrics
from gateway.auth import TokenVerifier
from gateway.authenticator import Authenticator
from gateway.errors import Unauthenticated
from gateway.jwks import MAX_JWKS_BYTES, FileSource, JwksCache, JwksStatus, UrlSource

T0 = 1_700_000_000.0
TTL_S = 300
COOLDOWN_S = 30
TIMEOUT_S = 0.5
ISSUER = "https://id.example"
AUDIENCE = "dialog"

KEY_A = ec.generate_private_key(ec.SECP256R1())
KEY_B = ed25519.Ed25519PrivateKey.generate()
KEY_C = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER = ec.generate_private_key(ec.SECP256R1())
ALGORITHMS = {"a": "ES256", "b": "EdDSA", "c": "RS256", "attacker": "ES256"}
PRIVATE = {"a": KEY_A, "b": KEY_B, "c": KEY_C, "attacker": ATTACKER}


def public_jwk(kid: str) -> dict[str, Any]:
    public = PRIVATE[kid].public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid}


def document(*kids: str) -> bytes:
    return json.dumps({"keys": [public_jwk(kid) for kid in kids]}).encode()


def token(kid: str, *, now: float = T0, headers: dict[str, Any] | None = None) -> str:
    claims = {"sub": "alice", "iat": int(now), "exp": int(now) + 600, "iss": ISSUER}
    claims["aud"] = AUDIENCE
    return jwt.encode(
        claims, PRIVATE[kid], algorithm=ALGORITHMS[kid], headers={"kid": kid, **(headers or {})}
    )


class Clock:
    """The injected clock: unix seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True
    hold: threading.Event | None = None  # answer only once this is set (or after 10 s)


class CountingServer:
    """A real HTTP/1.0 server on 127.0.0.1 that answers every GET with ``reply``."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests.append(self.path)
                    reply = owner.reply
                if reply.hold is not None:
                    reply.hold.wait(10)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.send_length:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (the deadline test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="jwks-test-server", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def serve(self, body: bytes, **reply: Any) -> None:
        with self._lock:
            self.reply = Reply(body=body, **reply)

    def __enter__(self) -> CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.reply.hold is not None:
            self.reply.hold.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with CountingServer() as running:
        running.serve(document("a"))
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_authenticator(source: Any, clock: Clock) -> tuple[Authenticator, JwksCache]:
    cache = JwksCache(
        source, ttl_s=TTL_S, refetch_cooldown_s=COOLDOWN_S, timeout_s=TIMEOUT_S, clock=clock
    )
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, max_ttl_s=3600, jwks=True)
    return Authenticator(verifier, cache, clock=clock), cache


@pytest.fixture
async def url_auth(
    server: CountingServer, clock: Clock
) -> AsyncIterator[tuple[Authenticator, JwksCache]]:
    auth, cache = make_authenticator(
        UrlSource(f"{server.base_url}/jwks.json", timeout_s=TIMEOUT_S), clock
    )
    await cache.refresh("startup")
    yield auth, cache
    await auth.close()


async def refused(auth: Authenticator, raw: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(raw)
    return info.value.message


def refreshes(trigger: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "dialog_gateway_jwks_refresh_total", {"trigger": trigger, "result": result}
    )
    return value or 0.0


# ---------------------------------------------------------------------------
# Loading, TTL, unknown kid, rotation
# ---------------------------------------------------------------------------


async def test_keys_from_the_url_verify_a_token(url_auth: Any, server: CountingServer) -> None:
    auth, cache = url_auth
    identity = await auth.authenticate(token("a"))
    assert identity.subject == "alice"
    assert server.requests == ["/jwks.json"]
    assert cache.status is JwksStatus.OK
    assert auth.jwks_status() == {
        "status": "ok",
        "source": "url",
        "keys": 1,
        "last_success_at": "2023-11-14T22:13:20.000Z",
        "last_attempt_at": "2023-11-14T22:13:20.000Z",
        "last_error": None,
    }
    assert metrics.REGISTRY.get_sample_value("dialog_gateway_jwks_keys") == 1
    assert metrics.REGISTRY.get_sample_value(
        "dialog_gateway_jwks_last_success_timestamp_seconds"
    ) == pytest.approx(T0)


async def test_the_keys_are_cached_until_the_ttl(
    url_auth: Any, server: CountingServer, clock: Clock
) -> None:
    auth, _ = url_auth
    for _ in range(5):
        await auth.authenticate(token("a", now=clock.now))
        clock.advance(TTL_S / 10)
    assert server.count == 1
    clock.now = T0 + TTL_S
    before = refreshes("ttl", "ok")
    await auth.authenticate(token("a", now=clock.now))
    assert server.count == 2
    assert refreshes("ttl", "ok") == before + 1


async def test_an_unknown_kid_refetches_at_most_once_per_cooldown(
    url_auth: Any, server: CountingServer, clock: Clock
) -> None:
    auth, _ = url_auth
    clock.advance(COOLDOWN_S)
    for _ in range(5):
        assert await refused(auth, token("b", now=clock.now)) == "unknown signing key"
    assert server.count == 2  # the startup fetch and one refetch
    clock.advance(COOLDOWN_S - 1)
    assert await refused(auth, token("c", now=clock.now)) == "unknown signing key"
    assert server.count == 2
    clock.advance(1)
    assert await refused(auth, token("c", now=clock.now)) == "unknown signing key"
    assert server.count == 3


async def test_concurrent_unknown_kids_share_one_fetch(
    url_auth: Any, server: CountingServer, clock: Clock
) -> None:
    import asyncio

    auth, _ = url_auth
    clock.advance(COOLDOWN_S)
    server.serve(document("a", "b"))
    identities = await asyncio.gather(*(auth.authenticate(token("b")) for _ in range(10)))
    assert {i.subject for i in identities} == {"alice"}
    assert server.count == 2


async def test_a_new_key_is_accepted_in_the_same_request(
    url_auth: Any, server: CountingServer, clock: Clock
) -> None:
    auth, _ = url_auth
    clock.advance(COOLDOWN_S)
    server.serve(document("a", "b"))  # the issuer adds key b
    before = refreshes("unknown_kid", "ok")
    assert (await auth.authenticate(token("b", now=clock.now))).subject == "alice"
    assert server.count == 2
    assert refreshes("unknown_kid", "ok") == before + 1
    assert (await auth.authenticate(token("a", now=clock.now))).subject == "alice"
    assert server.count == 2


async def test_a_new_key_within_the_cooldown_waits_for_the_ttl(
    url_auth: Any, server: CountingServer, clock: Clock
) -> None:
    auth, _ = url_auth
    server.serve(document("a", "b"))
    clock.advance(1)  # the startup fetch was one second ago: no refetch yet
    assert await refused(auth, token("b", now=clock.now)) == "unknown signing key"
    assert server.count == 1
    clock.advance(COOLDOWN_S)
    assert (await auth.authenticate(token("b", now=clock.now))).subject == "alice"


async def test_a_removed_key_is_refused_after_the_ttl(
    url_auth: Any, server: CountingServer, clock: Clock
) -> None:
    auth, _ = url_auth
    server.serve(document("b"))  # the issuer retires key a
    clock.advance(TTL_S - 1)
    assert (await auth.authenticate(token("a", now=clock.now))).subject == "alice"  # cached
    clock.advance(1)
    assert await refused(auth, token("a", now=clock.now)) == "unknown signing key"
    assert (await auth.authenticate(token("b", now=clock.now))).subject == "alice"
    assert server.count == 2  # the TTL refresh; the unknown kid a did not refetch again


# ---------------------------------------------------------------------------
# Outages keep the last good keys
# ---------------------------------------------------------------------------

BIG = b'{"keys": [], "pad": "' + b"x" * MAX_JWKS_BYTES + b'"}'
OUTAGES: list[tuple[str, dict[str, Any], str, str]] = [
    ("HTTP 503", {"body": b"down", "status": 503}, "HTTP status 503", "http_status"),
    (
        "a redirect",
        {"body": b"", "status": 302, "headers": {"Location": "/other"}},
        "HTTP status 302",
        "http_status",
    ),
    ("not JSON", {"body": b"<html>oops</html>"}, "invalid JWKS: not JSON", "invalid"),
    (
        "no usable key",
        {"body": b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}'},
        "invalid JWKS: no usable keys",
        "invalid",
    ),
    ("too large", {"body": BIG}, "document too large", "too_large"),
    (
        "too large, no length",
        {"body": BIG, "send_length": False},
        "document too large",
        "too_large",
    ),
    (
        "compressed",
        {"body": b"\x1f\x8b", "headers": {"Content-Encoding": "gzip"}},
        "compressed response",
        "invalid",
    ),
    (
        "no answer before the deadline",
        {"body": document("a"), "hold": "event"},
        "timeout",
        "timeout",
    ),
]


@pytest.mark.parametrize(
    ("reply", "reason", "result"), [c[1:] for c in OUTAGES], ids=[c[0] for c in OUTAGES]
)
async def test_an_outage_keeps_the_last_good_keys(
    url_auth: Any,
    server: CountingServer,
    clock: Clock,
    reply: dict[str, Any],
    reason: str,
    result: str,
) -> None:
    auth, cache = url_auth
    if reply.get("hold"):
        reply = {**reply, "hold": threading.Event()}
    server.serve(**reply)
    before = refreshes("ttl", result)
    clock.advance(TTL_S)
    assert (await auth.authenticate(token("a", now=clock.now))).subject == "alice"
    assert server.count == 2
    assert refreshes("ttl", result) == before + 1
    status = auth.jwks_status()
    assert status is not None
    assert (status["status"], status["keys"], status["last_error"]) == ("stale", 1, reason)
    assert status["last_success_at"] == "2023-11-14T22:13:20.000Z"
    assert cache.status is JwksStatus.STALE
    assert metrics.REGISTRY.get_sample_value("dialog_gateway_jwks_stale") == 1
    # Within the cooldown nobody waits for the failing server again.
    clock.advance(COOLDOWN_S - 1)
    assert (await auth.authenticate(token("a", now=clock.now))).subject == "alice"
    assert await refused(auth, token("b", now=clock.now)) == "unknown signing key"
    assert server.count == 2
    # Recovery.
    if server.reply.hold is not None:
        server.reply.hold.set()
    server.serve(document("a", "b"))
    clock.advance(1)
    assert (await auth.authenticate(token("b", now=clock.now))).subject == "alice"
    assert cache.status is JwksStatus.OK
    assert metrics.REGISTRY.get_sample_value("dialog_gateway_jwks_stale") == 0


async def test_unreachable_at_startup_is_unavailable(clock: Clock) -> None:
    with CountingServer() as gone:
        url = f"{gone.base_url}/jwks.json"
    auth, cache = make_authenticator(UrlSource(url, timeout_s=TIMEOUT_S), clock)
    try:
        await cache.refresh("startup")
        assert cache.status is JwksStatus.UNAVAILABLE
        status = auth.jwks_status()
        assert status is not None
        assert (status["status"], status["keys"]) == ("unavailable", 0)
        assert status["last_error"] == "connection failed"
        assert not auth.jwks_available()
        assert await refused(auth, token("a")) == "unknown signing key"
    finally:
        await auth.close()


# ---------------------------------------------------------------------------
# Keys named in a token are never fetched
# ---------------------------------------------------------------------------


async def test_jku_and_x5u_in_a_token_are_never_fetched(
    url_auth: Any, server: CountingServer, clock: Clock
) -> None:
    auth, _ = url_auth
    clock.advance(COOLDOWN_S)  # a refetch is allowed: only the configured URL may be asked
    with CountingServer() as attacker:
        attacker.serve(document("attacker"))
        headers = {
            "jku": f"{attacker.base_url}/jwks.json",
            "x5u": f"{attacker.base_url}/cert.pem",
            "jwk": public_jwk("attacker"),
        }
        forged = token("attacker", headers=headers)
        assert await refused(auth, forged) == "unknown signing key"
        # Same with the kid of a trusted key: the header's key is not used either.
        impostor = jwt.encode(
            {"sub": "mallory", "iat": int(T0), "exp": int(T0) + 60, "iss": ISSUER},
            ATTACKER,
            algorithm="ES256",
            headers={"kid": "a", **headers},
        )
        assert await refused(auth, impostor) == "invalid token"
        assert attacker.requests == []
    assert server.requests == ["/jwks.json", "/jwks.json"]


# ---------------------------------------------------------------------------
# JWKS_FILE
# ---------------------------------------------------------------------------


async def test_the_file_is_re_read_on_unknown_kid_and_after_the_ttl(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(document("a"))
    auth, cache = make_authenticator(FileSource(path), clock)
    try:
        await cache.refresh("startup")
        assert (await auth.authenticate(token("a"))).subject == "alice"
        path.write_bytes(document("a", "b"))  # key b added on disk
        clock.advance(COOLDOWN_S)
        assert (await auth.authenticate(token("b", now=clock.now))).subject == "alice"
        path.write_bytes(document("b"))  # key a removed on disk
        clock.advance(TTL_S - 1)
        assert (await auth.authenticate(token("a", now=clock.now))).subject == "alice"
        clock.advance(1)
        assert await refused(auth, token("a", now=clock.now)) == "unknown signing key"
        path.write_text("{ broken")
        clock.advance(TTL_S)
        assert (await auth.authenticate(token("b", now=clock.now))).subject == "alice"
        status = auth.jwks_status()
        assert status is not None
        assert (status["status"], status["source"]) == ("stale", "file")
        assert status["last_error"] == "invalid JWKS: not JSON"
    finally:
        await auth.close()


async def test_a_missing_file_is_unavailable_then_loads(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    auth, cache = make_authenticator(FileSource(path), clock)
    try:
        await cache.refresh("startup")
        assert cache.status is JwksStatus.UNAVAILABLE
        status = auth.jwks_status()
        assert status is not None
        assert status["last_error"].startswith("cannot read the file")
        assert str(tmp_path) not in status["last_error"]
        path.write_bytes(document("a"))
        clock.advance(COOLDOWN_S)
        assert (await auth.authenticate(token("a", now=clock.now))).subject == "alice"
    finally:
        await auth.close()


async def test_start_and_close_own_the_refresher(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(document("a"))
    auth, cache = make_authenticator(FileSource(path), clock)
    await auth.start()
    assert cache.status is JwksStatus.OK
    refresher = cache._refresher
    assert refresher is not None and refresher.get_name() == "jwks-refresher"
    await auth.close()
    assert refresher.cancelled()
