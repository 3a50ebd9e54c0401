"""A back-end for the security tests: it records every message it receives.

It is a real ``dialog.backend.v1.Backend`` server (mutual TLS, the shared
adapter base) started as its own process in place of ``chat``. Each received
message is appended as one JSON line to ``$RECORDER_FILE``, so a test can prove
that an attack never reached a back-end. What it answers depends on the text:
- ``stall [N]``: N deltas (none by default), then nothing until the call is cancelled;
- ``flood N [SIZE]``: N deltas (of SIZE characters each), then a final reply;
- ``sleep MS``: the final reply after MS milliseconds (a slow back-end);
- anything else: one final ``text`` reply with the same text.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from adapters.cli import main
from adapters.config import CHAT_DEFAULT_PORT, AdapterConfig
from adapters.runner import serve
from adapters.servicer import ConverseServicer
from dialog.v1 import message_pb2


class RecordingServicer(ConverseServicer):
    def __init__(self, log_path: Path):
        super().__init__()
        self._log = log_path.open("a", buffering=1)

    async def handle(
        self, msg: message_pb2.Message, user: str
    ) -> AsyncIterator[message_pb2.Message]:
        record = {"user": user, "id": msg.id, "type": msg.content.type, "text": msg.content.text}
        self._log.write(json.dumps(record) + "\n")
        words = msg.content.text.split()
        if words[:1] == ["stall"] and len(words) in (1, 2):
            for i in range(int(words[1]) if len(words) == 2 else 0):
                yield message_pb2.Message(content=message_pb2.Content(type="delta", text=str(i)))
            await asyncio.Event().wait()
        if words[:1] == ["sleep"] and len(words) == 2:
            await asyncio.sleep(int(words[1]) / 1000)
        if words[:1] == ["flood"] and len(words) in (2, 3):
            padding = "x" * int(words[2]) if len(words) == 3 else ""
            for i in range(int(words[1])):
                text = f"{i} {padding}"
                yield message_pb2.Message(content=message_pb2.Content(type="delta", text=text))
        yield message_pb2.Message(content=message_pb2.Content(type="text", text=msg.content.text))


async def run(env: Mapping[str, str]) -> None:
    config = AdapterConfig.from_env("chat", env, CHAT_DEFAULT_PORT)
    await serve(RecordingServicer(Path(env["RECORDER_FILE"])), config)


def received(log_path: Path) -> list[dict[str, str]]:
    """Every message the recorder has received so far."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line]


if __name__ == "__main__":
    sys.exit(main(run, dict(os.environ)))
