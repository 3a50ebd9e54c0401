"""The durable queue follows the configuration reloads, end to end: messages queued for a
back-end that was down stay in the store while a reload removes it, and are delivered once
a reload adds it again, without a restart.

The back-end ``spare`` is the recorder (tests/support/recorder.py), on a port of its own,
started only once the messages are queued.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.support.messages import post
from tests.support.recorder import received
from tests.support.reloads import sighup_reload
from tests.support.stack import Stack, free_port, wait_until

TIMEOUT_S = 30
SPARE_TIMEOUT_MS = 1000
FAST_REDELIVERY = {
    "REDELIVERY_INITIAL_MS": "100",
    "REDELIVERY_MAX_MS": "400",
    "BREAKER_OPEN_MS": "300",
    "MAX_DELIVERY_ATTEMPTS": "1000",
    "RATE_LIMIT_MAX": "100000",
    "CONFIG_WATCH_MS": "0",  # SIGHUP only: each reload is one signal
}


def routes(stack: Stack, *, spare: bool) -> dict[str, Any]:
    backends: list[dict[str, Any]] = [
        {"name": "chat", "target": f"127.0.0.1:{stack.ports['chat']}", "server_name": "chat"},
        {"name": "tasks", "target": f"127.0.0.1:{stack.ports['tasks']}", "server_name": "tasks"},
    ]
    rules = [{"service": "tasks", "backend": "tasks"}, {"service": "chat", "backend": "chat"}]
    if spare:
        backends.append(
            {
                "name": "spare",
                "target": f"127.0.0.1:{stack.ports['spare']}",
                "server_name": "chat",
                "required": False,
                "timeout_ms": SPARE_TIMEOUT_MS,
            }
        )
        rules.append({"service": "echo", "backend": "spare"})
    return {"backends": backends, "rules": rules, "default_backend": "chat"}


def echo(text: str, msg_id: str) -> dict[str, Any]:
    return {"id": msg_id, "content": {"type": "text", "text": text}, "context": {"service": "echo"}}


async def test_messages_queued_for_a_backend_are_delivered_once_a_reload_adds_it(
    tmp_path: Path,
) -> None:
    stack = Stack.create(tmp_path)
    stack.ports["spare"] = free_port()
    try:
        stack.start_backends()
        (stack.workdir / "config" / "routes.json").write_text(json.dumps(routes(stack, spare=True)))
        gateway = stack.start_gateway(**FAST_REDELIVERY)
        token = stack.token("queue-reload-user")
        sent = [f"q{i}" for i in range(3)]
        for msg_id in sent:
            r = await asyncio.to_thread(post, stack, token, echo(f"text {msg_id}", msg_id))
            assert r.status_code == 202, r.text

        line = await sighup_reload(stack, gateway, routes(stack, spare=False))
        assert "removed spare" in line, line
        assert "stopped spare" in gateway.log()
        stack.start_recorder("spare", port="spare")
        record = stack.workdir / "spare.jsonl"

        line = await sighup_reload(stack, gateway, routes(stack, spare=True))
        assert "added spare" in line, line
        assert "started spare" in gateway.log()
        # The entries the stopped worker had claimed are claimed again once their lease
        # (the back-end's timeout, REDELIVERY_MAX_MS and a margin) has passed.
        await asyncio.to_thread(
            wait_until,
            lambda: {m["id"] for m in received(record)} >= set(sent),
            TIMEOUT_S,
            "the queued messages delivered",
        )
        texts = [m["text"] for m in received(record)]
        assert sorted(set(texts)) == [f"text {msg_id}" for msg_id in sent], texts
        assert gateway.popen.poll() is None, gateway.log()
    finally:
        stack.stop()
