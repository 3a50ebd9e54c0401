"""Headers of every HTTP response: security headers, and CORS (ASGI middlewares, no
buffering)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.transcode.cors import CorsPolicy, preflight, response_headers

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` (and HSTS over TLS) to HTTP responses."""

    def __init__(self, app: ASGIApp, *, tls: bool):
        self.app = app
        self.headers = SECURITY_HEADERS + ((HSTS,) if tls else ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", ())}
                extra = [h for h in self.headers if h[0] not in present]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Cors:
    """The CORS answers of ``gateway.transcode.cors`` (an ASGI middleware, no buffering).

    ``policy`` is read per request (``ALLOWED_ORIGINS`` and the back-ends'
    ``forward_metadata`` change with a reload); ``methods`` names the HTTP methods of the
    routes at a raw path. While no origin is allowed, requests pass untouched."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Callable[[], CorsPolicy],
        methods: Callable[[str], Iterable[str]],
    ):
        self.app = app
        self.policy = policy
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        policy = self.policy() if origin is not None else None
        if origin is None or policy is None or not policy.active:
            await self.app(scope, receive, send)
            return
        method = _header(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and method is not None:
            await self._preflight(scope, send, policy, origin, method)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = [name.decode("latin-1") for name, _ in headers]
                extra = response_headers(policy, origin, names)
                message["headers"] = headers + [(k.encode(), v.encode("latin-1")) for k, v in extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, scope: Scope, send: Send, policy: CorsPolicy, origin: str, method: str
    ) -> None:
        raw = scope.get("raw_path")
        path = raw.decode("latin-1").partition("?")[0] if raw else scope["path"]
        requested = _header(scope, b"access-control-request-headers") or ""
        answer = preflight(policy, origin, method, requested, self.methods(path))
        body = answer.text.encode()
        headers = [(k.encode(), v.encode("latin-1")) for k, v in answer.headers]
        headers += [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of the request header ``name`` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
