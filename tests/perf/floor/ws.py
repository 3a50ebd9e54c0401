"""``python -m tests.perf.floor.ws PORT CERT KEY``: the WebSocket floor (see the package).

Each text frame ``{"id", "content": {"text"}}`` gets the gateway's three frames: an ack,
one delta and the final reply carrying the same text, each a JSON ``Message`` of the same
shape and about the same size as the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
import uuid

import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SUBPROTOCOL = "dialog.v1.json"


def _frame(reply_to: str, role: str, kind: str, text: str, seq: int) -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    message = {
        "id": uuid.uuid4().hex,
        "role": role,
        "content": {"type": kind, "text": text},
        "context": {"conversation_id": "c", "service": "chat", "reply_to": reply_to},
        "timestamp": stamp,
        "seq": str(seq),
    }
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


async def echo(ws: WebSocket) -> None:
    await ws.accept(SUBPROTOCOL)
    seq = 0
    try:
        while True:
            msg = json.loads(await ws.receive_text())
            msg_id, text = msg["id"], msg["content"]["text"]
            for role, kind, body in (("system", "ack", ""), ("assistant", "delta", text)):
                seq += 1
                await ws.send_text(_frame(msg_id, role, kind, body, seq))
            seq += 1
            await ws.send_text(_frame(msg_id, "assistant", "text", text, seq))
    except WebSocketDisconnect:
        pass


def main() -> None:
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        lifespan="off",
        log_config=None,
        access_log=False,
        ws_per_message_deflate=False,
        ssl_context_factory=lambda _config, _default: context,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
