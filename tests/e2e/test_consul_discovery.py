"""Consul discovery with two instances of one back-end, end to end.

Two recorder back-ends (tests/support/recorder.py) are the instances of Consul service
``chat``; the Consul is the stand-in server of tests/fakes/consul_server.py (Consul cannot
run on the build machine), in this process, reached by the gateway over loopback.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.e2e.test_websocket import text_message, until_final, ws_connect
from tests.fakes.consul_server import running_consul
from tests.support.recorder import received
from tests.support.stack import Stack, free_port, wait_until

TIMEOUT_S = 20
WAIT_S = 1  # the blocking-query wait: one cycle


def start_recorder(stack: Stack, name: str) -> Path:
    """A recorder on the port named ``name``; the file it records to."""
    stack.start_recorder(name, port=name)
    return stack.workdir / f"{name}.jsonl"


async def send(stack: Stack, msg_id: str) -> None:
    async with ws_connect(stack, stack.token()) as ws:
        await ws.send(text_message(msg_id, msg_id, service="chat"))
        frames = await until_final(ws, msg_id)
        assert frames[-1]["content"] == {"type": "text", "text": msg_id}, frames


def ids(record: Path) -> set[str]:
    return {r["id"] for r in received(record)}


async def test_calls_spread_over_the_instances_and_follow_a_removal(tmp_path: Path) -> None:
    stack = Stack.create(tmp_path)
    for name in ("one", "two"):
        stack.ports[name] = free_port()
    with running_consul(token="t0ken") as (consul, consul_url):
        try:
            one, two = start_recorder(stack, "one"), start_recorder(stack, "two")
            instances = {n: ("127.0.0.1", stack.ports[n], "passing") for n in ("one", "two")}
            consul.set_instances("chat", [instances["one"], instances["two"]])
            routes = {
                "backends": [
                    {"name": "chat", "consul_service": "chat", "server_name": "chat"},
                    {"name": "tasks", "target": "127.0.0.1:1", "required": False},
                ],
                "rules": [{"service": "chat", "backend": "chat"}],
                "default_backend": "chat",
            }
            (stack.workdir / "config" / "routes.json").write_text(json.dumps(routes))
            gateway = stack.start_gateway(
                CONSUL_HTTP_ADDR=consul_url,
                CONSUL_HTTP_TOKEN="t0ken",
                CONSUL_WAIT_S=str(WAIT_S),
                CONFIG_WATCH_MS="0",
            )
            # Each connection opens its own call: round robin gives them to both instances.
            for i in range(8):
                await send(stack, f"before-{i}")
            assert ids(one) and ids(two), (ids(one), ids(two))
            assert len(ids(one) | ids(two)) == 8

            async with ws_connect(stack, stack.token()) as ws:
                await ws.send(text_message("open-1", "open-1", service="chat"))
                assert (await until_final(ws, "open-1"))[-1]["content"]["type"] == "text"

                consul.set_instances("chat", [instances["one"]])
                await asyncio.to_thread(
                    wait_until,
                    lambda: "changed chat" in gateway.log(),
                    WAIT_S * 2 + 5,
                    "the new instance set in force",
                )
                before_two = ids(two)
                await ws.send(text_message("open-2", "open-2", service="chat"))
                frames = await until_final(ws, "open-2")
                assert frames[-1]["content"] == {"type": "text", "text": "open-2"}, frames
                for i in range(6):
                    await send(stack, f"after-{i}")
            assert ids(two) == before_two
            assert {"open-2", *(f"after-{i}" for i in range(6))} <= ids(one)
            assert gateway.popen.poll() is None
            assert stack.health_status() == 200
        finally:
            stack.stop()
