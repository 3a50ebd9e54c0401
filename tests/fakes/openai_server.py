"""A fake of a hosted LLM that speaks the real OpenAI chat-completions
streaming wire format.

It is a real HTTP/1.1 server (Starlette on uvicorn) on 127.0.0.1, port 0, run
on its own thread with its own event loop. ``POST /v1/chat/completions`` with
``"stream": true`` answers ``200 text/event-stream``: one
``data: {chat.completion.chunk JSON}\\n\\n`` event per scripted piece (the first
delta carries the role, the last chunk a ``finish_reason``), then
``data: [DONE]\\n\\n``, exactly as the hosted API does. A ``Script`` can make
it fail instead: an error status with an OpenAI error body, a malformed
chunk, a stream cut before ``[DONE]``, or a stall mid-stream.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STOP_TIMEOUT_S = 10.0


@dataclass
class Script:
    """What the fake answers."""

    pieces: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    status: int = 200
    malformed_after: int | None = None  # send a non-JSON chunk after this many pieces
    cut_before_done: bool = False  # end the stream without finish_reason and [DONE]
    stall_after_first_s: float = 0.0  # stall (server side) after the first piece


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _events(script: Script, model: str) -> AsyncIterator[bytes]:
    for index, piece in enumerate(script.pieces):
        if script.malformed_after == index:
            yield b"data: {not json\n\n"
        delta = {"role": "assistant", "content": piece} if index == 0 else {"content": piece}
        yield _chunk(model, delta, None)
        if index == 0 and script.stall_after_first_s:
            await anyio.sleep(script.stall_after_first_s)
    if script.cut_before_done:
        return
    yield _chunk(model, {}, "stop")
    yield b"data: [DONE]\n\n"


class FakeOpenAI:
    """The fake server; use it as a context manager. ``base_url`` has no ``/v1``."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[RecordedRequest] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        app = Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="fake-openai"
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _complete(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        if self.script.status != 200:
            error = {"error": {"message": "fake failure", "type": "server_error", "code": None}}
            return JSONResponse(error, status_code=self.script.status)
        return StreamingResponse(
            _events(self.script, str(body.get("model", ""))), media_type="text/event-stream"
        )

    def __enter__(self) -> FakeOpenAI:
        # The socket already listens, so clients may connect before uvicorn runs.
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("fake OpenAI server did not stop")


def unused_base_url() -> str:
    """The URL of a loopback port where nothing listens (a server that is down)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
