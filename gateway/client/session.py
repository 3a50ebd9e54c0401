"""The asyncio shell of the command-line client: ``send`` one message, or ``chat``.

Each function owns one WebSocket, feeds every frame to
:func:`gateway.client.frames.render` and writes what comes back. websockets,
ssl and socket errors become ``error:`` lines in :func:`_failure_line`, the one
boundary of this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import threading
import uuid
from typing import TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.typing import Subprotocol

from gateway.client.frames import (
    MAX_FRAME_BYTES,
    SUBPROTOCOL,
    ClientError,
    Quit,
    SendText,
    ShowText,
    SwitchService,
    auth_headers,
    build_request,
    close_line,
    parse_input,
    render_raw,
    service_notice,
    status_line,
)


def new_id() -> str:
    """A fresh message id (uuid4 hex)."""
    return uuid.uuid4().hex


def new_conversation_id() -> str:
    """A conversation id for one CLI session."""
    return f"cli-{uuid.uuid4().hex}"


def client_ssl_context(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    """None for ``ws://``; for ``wss://`` a context that verifies the server.

    ``ca_file`` is the PEM bundle to trust (the dev CA, ``certs/ca.pem``);
    None trusts the system store. Hostname checking stays on.
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "ws":
        return None
    if scheme != "wss":
        raise ClientError(f"error: {url!r} is not a ws:// or wss:// URL")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"error: cannot load the CA file {ca_file} — {exc}") from exc


def _connect(url: str, token: str, ca_file: str | None, open_timeout_s: float) -> connect:
    return connect(
        url,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        additional_headers=auth_headers(token),
        ssl=client_ssl_context(url, ca_file),
        open_timeout=open_timeout_s,
        max_size=MAX_FRAME_BYTES,
        # Talk to the gateway directly: an environment proxy would not trust the dev CA.
        proxy=None,
    )


def _failure_line(exc: Exception, url: str, timeout_s: float) -> str:
    # The one place where websockets, ssl and socket errors become printable lines.
    if isinstance(exc, ClientError):
        return str(exc)
    if isinstance(exc, InvalidStatus):
        return status_line(exc.response.status_code)
    if isinstance(exc, ConnectionClosed):
        return close_line(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
    if isinstance(exc, InvalidURI):
        return f"error: {url!r} is not a valid WebSocket URL"
    if isinstance(exc, InvalidHandshake):
        return f"error: WebSocket handshake with {url} failed — {exc}"
    if isinstance(exc, WebSocketException):
        return f"error: WebSocket error with {url} — {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"error: TLS verification of {url} failed — {exc.verify_message} (check --ca-file)"
    if isinstance(exc, ssl.SSLError):
        return f"error: TLS with {url} failed — {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return f"error: no answer from {url} within {timeout_s:g} s"
    if isinstance(exc, OSError):
        return f"error: cannot connect to {url} — {exc.strerror or exc}"
    return f"error: {exc}"


_FAILURES = (ClientError, WebSocketException, OSError)


def _write_line(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


async def _print_reply(
    ws: ClientConnection, request_id: str, out: TextIO, *, prefix: str
) -> str | None:
    """Stream the reply to ``request_id`` to ``out``; the error line, or None."""
    streamed = started = False
    try:
        while True:
            shown = render_raw(await ws.recv(), request_id=request_id, streamed=streamed)
            if (shown.text or (shown.done and shown.error is None)) and not started:
                out.write(prefix)
                started = True
            if shown.text:
                out.write(shown.text)
                out.flush()
                streamed = streamed or not shown.done
            if shown.done:
                return shown.error
    finally:
        if started:
            _write_line(out, "")


async def send(
    url: str,
    token: str,
    text: str,
    *,
    service: str = "",
    ca_file: str | None,
    out: TextIO,
    err: TextIO | None = None,
    timeout_s: float = 60,
) -> int:
    """Send one text message and print its reply; 0, or 1 after an ``error:`` line on ``err``.

    Deltas print as they arrive; the final reply's text prints only when no delta
    did; a newline ends the reply. ``timeout_s`` bounds the whole exchange.
    ``err`` defaults to ``sys.stderr``.
    """
    err_out = err if err is not None else sys.stderr
    request_id = new_id()
    frame = build_request(
        text, request_id=request_id, conversation_id=new_conversation_id(), service=service
    )
    try:
        async with asyncio.timeout(timeout_s), _connect(url, token, ca_file, timeout_s) as ws:
            await ws.send(frame)
            error = await _print_reply(ws, request_id, out, prefix="")
    except _FAILURES as exc:
        error = _failure_line(exc, url, timeout_s)
    if error is None:
        return 0
    _write_line(err_out, error)
    return 1


async def chat(
    url: str,
    token: str,
    *,
    service: str = "",
    ca_file: str | None,
    stdin: TextIO,
    out: TextIO,
    err: TextIO | None = None,
    open_timeout_s: float = 10,
    reply_timeout_s: float = 60,
) -> int:
    """Interactive chat on one connection and one conversation (see :data:`CHAT_HELP`).

    Error frames and late replies are reported on ``err`` and the session goes on.
    ``/quit`` or end of input closes with code 1000 and returns 0; a refused
    handshake or a lost connection returns 1 after an ``error:`` line.
    """
    err_out = err if err is not None else sys.stderr
    try:
        async with _connect(url, token, ca_file, open_timeout_s) as ws:
            await _chat_loop(ws, service, stdin, out, err_out, reply_timeout_s)
            await ws.close(1000)
    except _FAILURES as exc:
        _write_line(err_out, _failure_line(exc, url, open_timeout_s))
        return 1
    return 0


async def _chat_loop(
    ws: ClientConnection,
    service: str,
    stdin: TextIO,
    out: TextIO,
    err: TextIO,
    reply_timeout_s: float,
) -> None:
    conversation_id = new_conversation_id()
    while True:
        out.write("you> ")
        out.flush()
        line = await read_line(stdin)
        command = parse_input(line, service)
        if isinstance(command, Quit):
            if not line:  # end of input: finish the prompt line
                _write_line(out, "")
            return
        if isinstance(command, ShowText):
            _write_line(out, command.text)
        elif isinstance(command, SwitchService):
            service = command.service
            _write_line(out, service_notice(service))
        elif isinstance(command, SendText):
            request_id = new_id()
            frame = build_request(
                command.text,
                request_id=request_id,
                conversation_id=conversation_id,
                service=command.service,
            )
            try:
                async with asyncio.timeout(reply_timeout_s):
                    await ws.send(frame)
                    error = await _print_reply(ws, request_id, out, prefix="assistant> ")
            except TimeoutError:
                error = f"error: no reply within {reply_timeout_s:g} s"
            if error is not None:
                _write_line(err, error)


async def read_line(stdin: TextIO) -> str:
    """``stdin.readline()`` without blocking the event loop.

    The read runs in a daemon thread rather than the default executor: an
    interrupted read (Ctrl-C at the prompt) cannot be cancelled, and asyncio.run
    would join an executor thread until the user pressed Enter.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[str] = loop.create_future()

    def deliver(line: str, exc: BaseException | None) -> None:
        if result.done():
            return
        if exc is None:
            result.set_result(line)
        else:
            result.set_exception(exc)

    def work() -> None:
        try:
            line, exc = stdin.readline(), None
        except Exception as read_error:
            line, exc = "", read_error
        with contextlib.suppress(RuntimeError):  # the loop closed while we read
            loop.call_soon_threadsafe(deliver, line, exc)

    threading.Thread(target=work, name="chat-stdin", daemon=True).start()
    return await result
