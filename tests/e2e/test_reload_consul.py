"""Consul discovery follows the configuration reloads, end to end.

A reload (SIGHUP) adds back-end ``spare`` with ``consul_service: spare``; the stand-in
Consul (tests/fakes/consul_server.py) then registers its instances, two recorder back-ends
(tests/support/recorder.py), one after the other. Back-end ``chat`` follows Consul service
``chat`` from the start, and its blocking queries, one per ``CONSUL_WAIT_S``, are the clock
of the test. A last reload removes ``spare``, and Consul is no longer asked about it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.e2e.test_websocket import text_message, until_final, ws_connect
from tests.fakes.consul_server import FakeConsul, running_consul
from tests.support.recorder import received
from tests.support.reloads import sighup_reload
from tests.support.stack import Stack, free_port, wait_until

TIMEOUT_S = 20
WAIT_S = 1  # the blocking-query wait: one cycle


def routes(*, spare: bool) -> dict[str, Any]:
    backends: list[dict[str, Any]] = [
        {"name": "chat", "consul_service": "chat", "server_name": "chat"},
        {"name": "tasks", "target": "127.0.0.1:1", "required": False},
    ]
    rules = [{"service": "chat", "backend": "chat"}]
    if spare:
        backends.append(
            {"name": "spare", "consul_service": "spare", "server_name": "chat", "required": False}
        )
        rules.append({"service": "echo", "backend": "spare"})
    return {"backends": backends, "rules": rules, "default_backend": "chat"}


def queries(consul: FakeConsul, service: str) -> int:
    return sum(r["path"] == [f"/v1/health/service/{service}"] for r in list(consul.requests))


async def wait_for_queries(consul: FakeConsul, service: str, more: int) -> None:
    """Until ``more`` queries for ``service`` arrived from now: that many cycles passed."""
    target = queries(consul, service) + more
    await asyncio.to_thread(
        wait_until,
        lambda: queries(consul, service) >= target,
        WAIT_S * (more + 1) + 5,
        f"{more} queries for {service}",
    )


async def send_echo(stack: Stack, msg_id: str) -> None:
    async with ws_connect(stack, stack.token()) as ws:
        await ws.send(text_message(msg_id, msg_id, service="echo"))
        frames = await until_final(ws, msg_id)
        assert frames[-1]["content"] == {"type": "text", "text": msg_id}, frames


def ids(record: Path) -> set[str]:
    return {r["id"] for r in received(record)} if record.exists() else set()


async def test_a_backend_added_by_a_reload_is_followed_until_a_reload_removes_it(
    tmp_path: Path,
) -> None:
    stack = Stack.create(tmp_path)
    for name in ("one", "two"):
        stack.ports[name] = free_port()
    with running_consul() as (consul, consul_url):
        try:
            stack.start_backends()
            stack.start_recorder("one", port="one")
            stack.start_recorder("two", port="two")
            one, two = stack.workdir / "one.jsonl", stack.workdir / "two.jsonl"
            consul.set_instances("chat", [("127.0.0.1", stack.ports["chat"], "passing")])
            (stack.workdir / "config" / "routes.json").write_text(json.dumps(routes(spare=False)))
            gateway = stack.start_gateway(
                CONSUL_HTTP_ADDR=consul_url, CONSUL_WAIT_S=str(WAIT_S), CONFIG_WATCH_MS="0"
            )

            line = await sighup_reload(stack, gateway, routes(spare=True))
            assert "added spare" in line, line
            await asyncio.to_thread(
                wait_until, lambda: queries(consul, "spare") >= 1, TIMEOUT_S, "a spare query"
            )

            # Registered and healthy: in force after one blocking query, without a restart.
            consul.set_instances("spare", [("127.0.0.1", stack.ports["one"], "passing")])
            await asyncio.to_thread(
                wait_until,
                lambda: "changed spare" in gateway.log(),
                WAIT_S * 2 + 5,
                "spare's instance in force",
            )
            await send_echo(stack, "to-one")
            assert "to-one" in ids(one)

            # Deregistered for another instance: the traffic moves.
            consul.set_instances("spare", [("127.0.0.1", stack.ports["two"], "passing")])
            await asyncio.to_thread(
                wait_until,
                lambda: gateway.log().count("changed spare") >= 2,
                WAIT_S * 2 + 5,
                "spare's new instance in force",
            )
            for i in range(3):
                await send_echo(stack, f"to-two-{i}")
            assert {f"to-two-{i}" for i in range(3)} <= ids(two)
            assert not any(i.startswith("to-two") for i in ids(one))

            line = await sighup_reload(stack, gateway, routes(spare=False))
            assert "removed spare" in line, line
            assert "consul: no longer following spare" in gateway.log()
            # A query sent as the loop stopped may still arrive: count after one more cycle.
            await wait_for_queries(consul, "chat", 1)
            after_removal = queries(consul, "spare")
            await wait_for_queries(consul, "chat", 3)
            assert queries(consul, "spare") == after_removal
            # Back-end chat, followed from the start, was never dropped.
            async with ws_connect(stack, stack.token()) as ws:
                await ws.send(text_message("chat", "still here", service="chat"))
                frames = await until_final(ws, "chat")
                assert frames[-1]["content"] == {"type": "text", "text": "still here"}, frames
            assert gateway.popen.poll() is None, gateway.log()
            assert stack.health_status() == 200
        finally:
            stack.stop()
