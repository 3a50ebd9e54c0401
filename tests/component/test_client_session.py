"""The client shell (gateway.client.session) against a scripted WebSocket server on loopback.

The server below speaks the dialog.v1.json protocol from the client's side of the
contract only; what it answers depends on the text it receives.
"""

from __future__ import annotations

import io
import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from gateway.certs import create_dev_certs
from gateway.client import ClientError, chat, client_ssl_context, send

GOOD_TOKEN = "good.token.value"
# Development certificates made for this module, so that it never depends on the checkout.
CERTS = Path(tempfile.mkdtemp(prefix="client-session-certs-"))
create_dev_certs(CERTS)
CA_FILE = CERTS / "ca.pem"
SERVER_CERT = CERTS / "gateway.pem"
SERVER_KEY = CERTS / "gateway-key.pem"


@dataclass
class Seen:
    """What the scripted server received."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    subprotocols: list[str | None] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)


def _reply(request: dict[str, Any], kind: str, text: str = "", **extra: Any) -> str:
    content: dict[str, Any] = {"type": kind, "text": text, **extra}
    return json.dumps(
        {
            "id": "srv",
            "role": "system" if kind in ("ack", "error") else "assistant",
            "content": content,
            "context": {"reply_to": request["id"], "conversation_id": "x"},
            "seq": "1",
        }
    )


async def _answer(conn: ServerConnection, request: dict[str, Any]) -> None:
    text = request["content"]["text"]
    await conn.send(_reply(request, "ack"))
    # A late reply to some earlier request must never show.
    await conn.send(_reply({"id": "earlier"}, "text", "STALE"))
    if text == "stream":
        for part in ("he", "llo"):
            await conn.send(_reply(request, "delta", part))
        await conn.send(_reply(request, "text", "hello"))
    elif text == "fail":
        data = {"code": "backend_error", "message": "boom"}
        await conn.send(_reply(request, "error", "boom", data=data))
    elif text == "close":
        await conn.close(4401, "token expired")
    elif text != "silent":
        await conn.send(_reply(request, "text", f"echo {text}"))


@asynccontextmanager
async def scripted_gateway(tls: bool = False) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    def check_token(conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {GOOD_TOKEN}":
            return conn.respond(401, "unauthenticated\n")
        return None

    async def handler(conn: ServerConnection) -> None:
        seen.subprotocols.append(conn.subprotocol)
        async for raw in conn:
            request = json.loads(raw)
            seen.messages.append(request)
            await _answer(conn, request)
        seen.close_codes.append(conn.close_code)

    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(SERVER_CERT, SERVER_KEY)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=["dialog.v1.json"],  # type: ignore[list-item]
        process_request=check_token,
        ssl=context,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        host = "localhost" if tls else "127.0.0.1"
        yield f"{'wss' if tls else 'ws'}://{host}:{port}/ws", seen


async def run_send(url: str, text: str, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    kwargs = {"token": GOOD_TOKEN, "ca_file": None, **kwargs}
    code = await send(url, text=text, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


async def run_chat(url: str, lines: str, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    kwargs = {"token": GOOD_TOKEN, "ca_file": None, **kwargs}
    code = await chat(url, stdin=io.StringIO(lines), out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


# --- send ---------------------------------------------------------------------------


async def test_send_streams_deltas_and_skips_the_final_text() -> None:
    async with scripted_gateway() as (url, seen):
        assert await run_send(url, "stream", service="chat") == (0, "hello\n", "")
    [request] = seen.messages
    assert request["role"] == "user"
    assert request["context"]["service"] == "chat"
    assert request["context"]["conversation_id"].startswith("cli-")
    assert seen.subprotocols == ["dialog.v1.json"]


async def test_send_prints_a_final_reply_without_deltas() -> None:
    async with scripted_gateway() as (url, _):
        assert await run_send(url, "hi") == (0, "echo hi\n", "")


async def test_send_reports_an_error_frame() -> None:
    async with scripted_gateway() as (url, _):
        assert await run_send(url, "fail") == (1, "", "error: backend_error — boom\n")


async def test_send_reports_a_refused_token() -> None:
    async with scripted_gateway() as (url, seen):
        code, out, err = await run_send(url, "hi", token="bad")
    assert (code, out) == (1, "")
    assert err == "error: 401 unauthenticated — get a fresh token with dialog-gateway token\n"
    assert seen.messages == []


async def test_send_reports_a_close_before_the_reply() -> None:
    async with scripted_gateway() as (url, _):
        code, _out, err = await run_send(url, "close")
    assert code == 1
    assert err.startswith("error: the server closed the connection (4401: token expired")


async def test_send_gives_up_at_its_deadline() -> None:
    async with scripted_gateway() as (url, _):
        code, _out, err = await run_send(url, "silent", timeout_s=0.2)
    assert code == 1
    assert err == f"error: no answer from {url} within 0.2 s\n"


async def test_send_reports_a_refused_connection() -> None:
    async with scripted_gateway() as (url, _):
        pass  # the port is free again once the server is closed
    code, _out, err = await run_send(url, "hi")
    assert code == 1
    assert err.startswith(f"error: cannot connect to {url} — ")


async def test_send_refuses_a_url_that_is_not_websocket() -> None:
    code, _out, err = await run_send("http://127.0.0.1:1/ws", "hi")
    assert (code, err) == (1, "error: 'http://127.0.0.1:1/ws' is not a ws:// or wss:// URL\n")


# --- chat ---------------------------------------------------------------------------


async def test_chat_keeps_one_conversation_and_switches_service() -> None:
    script = "stream\n\n/service tasks\nlist\n/tasks add milk\n/quit\n"
    async with scripted_gateway() as (url, seen):
        code, out, err = await run_chat(url, script, service="chat")
    assert (code, err) == (0, "")
    assert out == (
        "you> assistant> hello\n"
        "you> "
        "you> (messages now go to 'tasks')\n"
        "you> assistant> echo list\n"
        "you> assistant> echo add milk\n"
        "you> "
    )
    assert [m["context"].get("service", "") for m in seen.messages] == ["chat", "tasks", "tasks"]
    assert len({m["context"]["conversation_id"] for m in seen.messages}) == 1
    assert len({m["id"] for m in seen.messages}) == 3
    assert seen.close_codes == [1000]


async def test_chat_goes_on_after_an_error_frame_and_ends_at_eof() -> None:
    async with scripted_gateway() as (url, seen):
        code, out, err = await run_chat(url, "fail\nagain\n")
    assert (code, err) == (0, "error: backend_error — boom\n")
    assert out == "you> you> assistant> echo again\nyou> \n"
    assert seen.close_codes == [1000]


async def test_chat_stops_when_the_server_closes() -> None:
    async with scripted_gateway() as (url, _):
        code, _out, err = await run_chat(url, "close\nnever sent\n")
    assert code == 1
    assert err.startswith("error: the server closed the connection (4401: token expired")


async def test_chat_reports_a_late_reply_and_goes_on() -> None:
    async with scripted_gateway() as (url, _):
        code, out, err = await run_chat(url, "silent\nhi\n", reply_timeout_s=0.2)
    assert (code, err) == (0, "error: no reply within 0.2 s\n")
    assert out.endswith("assistant> echo hi\nyou> \n")


async def test_chat_reports_a_refused_token() -> None:
    async with scripted_gateway() as (url, _):
        code, out, err = await run_chat(url, "hi\n", token="bad")
    assert (code, out) == (1, "")
    assert err.startswith("error: 401 unauthenticated")


# --- TLS ----------------------------------------------------------------------------


def test_ssl_context_is_none_for_plain_websocket() -> None:
    assert client_ssl_context("ws://localhost:8080/ws", str(CA_FILE)) is None


def test_ssl_context_reports_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match=r"^error: cannot load the CA file"):
        client_ssl_context("wss://localhost:8080/ws", str(tmp_path / "missing.pem"))


def test_ssl_context_verifies_the_server() -> None:
    context = client_ssl_context("wss://localhost:8080/ws", str(CA_FILE))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


async def test_send_over_tls_with_the_dev_ca() -> None:
    async with scripted_gateway(tls=True) as (url, _):
        assert await run_send(url, "hi", ca_file=str(CA_FILE)) == (0, "echo hi\n", "")


async def test_send_over_tls_refuses_an_unknown_ca(tmp_path: Path) -> None:
    # The server's own certificate is not a CA, so nothing vouches for the server.
    async with scripted_gateway(tls=True) as (url, _):
        code, _out, err = await run_send(url, "hi", ca_file=str(SERVER_CERT))
    assert code == 1
    assert err.startswith(f"error: TLS verification of {url} failed — ")
