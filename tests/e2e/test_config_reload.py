"""Hot reload of routes and back-ends on SIGHUP, with a WebSocket that stays open throughout.

Three real back-ends: chat and tasks, and the recorder (tests/support/recorder.py) on a port
of its own, which a reload adds as back-end ``spare`` (service ``echo``) and removes again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.certs import issue_cert
from tests.e2e.test_websocket import recv_json, text_message, until_final, ws_connect
from tests.support.stack import Stack, free_port, wait_until

TIMEOUT_S = 20
APPLIED = "configuration reloaded"
REJECTED = "configuration reload rejected"


def routes(stack: Stack, *, spare: bool) -> dict[str, Any]:
    backends: list[dict[str, Any]] = [
        {"name": "chat", "target": "127.0.0.1:1", "server_name": "chat"},
        {"name": "tasks", "target": "127.0.0.1:1", "server_name": "tasks"},
    ]
    rules = [{"service": "tasks", "backend": "tasks"}, {"service": "chat", "backend": "chat"}]
    if spare:
        target = f"127.0.0.1:{stack.ports['spare']}"
        backends.append(
            {"name": "spare", "target": target, "server_name": "chat", "required": False}
        )
        rules.append({"service": "echo", "backend": "spare"})
    return {"backends": backends, "rules": rules, "default_backend": "chat"}


@pytest.fixture(scope="module")
def reload_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack.create(Path(tmp_path_factory.mktemp("reload")))
    stack.ports["spare"] = free_port()
    try:
        stack.start_backends()
        stack.start_recorder("spare", port="spare")
        write_routes(stack, routes(stack, spare=False))
        stack.start_gateway(CONFIG_WATCH_MS="0")  # SIGHUP only: each reload is one signal
        yield stack
    finally:
        stack.stop()


def write_routes(stack: Stack, body: object) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    (stack.workdir / "config" / "routes.json").write_text(text)


def gateway_log(stack: Stack) -> str:
    return next(p for p in stack.processes if p.name == "gateway").log()


async def reload(stack: Stack, body: object, log_line: str) -> str:
    """Write ``body`` as routes.json, SIGHUP the gateway, and return its next ``log_line``."""
    write_routes(stack, body)
    gateway = next(p for p in stack.processes if p.name == "gateway")
    seen = gateway.log().count(log_line)
    os.kill(gateway.popen.pid, signal.SIGHUP)
    await asyncio.to_thread(
        wait_until, lambda: gateway.log().count(log_line) > seen, TIMEOUT_S, log_line
    )
    assert gateway.popen.poll() is None, gateway.log()
    return [line for line in gateway.log().splitlines() if log_line in line][seen]


def reloads(stack: Stack, result: str) -> float:
    with urllib.request.urlopen(
        f"{stack.base_url}/metrics", context=stack.ssl_context(), timeout=5
    ) as resp:
        text = resp.read().decode()
    prefix = f'dialog_gateway_config_reloads_total{{result="{result}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


async def test_a_reload_adds_a_backend_and_the_next_message_follows_the_new_route(
    reload_stack: Stack,
) -> None:
    stack = reload_stack
    await reload(stack, routes(stack, spare=False), APPLIED)
    async with ws_connect(stack, stack.token()) as ws:
        await ws.send(text_message("before", "hello", service="echo"))
        frames = await until_final(ws, "before")
        assert frames[-1]["content"]["type"] == "error", frames
        assert frames[-1]["content"]["data"]["code"] == "unimplemented"

        line = await reload(stack, routes(stack, spare=True), APPLIED)
        assert "added spare" in line and "3 rules" in line, line

        await ws.send(text_message("after", "hello spare", service="echo"))
        frames = await until_final(ws, "after")
        assert frames[-1]["content"] == {"type": "text", "text": "hello spare"}, frames
        # The chat back-end, untouched by the reload, still answers on the same socket.
        await ws.send(text_message("chat", "still here", service="chat"))
        frames = await until_final(ws, "chat")
        assert frames[-1]["content"] == {"type": "text", "text": "still here"}, frames
    recorded = (stack.workdir / "spare.jsonl").read_text()
    assert "hello spare" in recorded


async def test_a_bad_routes_file_is_rejected_and_the_old_routing_stays(
    reload_stack: Stack,
) -> None:
    stack = reload_stack
    await reload(stack, routes(stack, spare=True), APPLIED)
    rejected_before = reloads(stack, "rejected")
    async with ws_connect(stack, stack.token()) as ws:
        bad = routes(stack, spare=True)
        bad["rules"].append({"service": "lost", "backend": "nowhere"})
        line = await reload(stack, bad, REJECTED)
        assert "unknown backend 'nowhere'" in line, line
        line = await reload(stack, "{not json", REJECTED)
        assert "cannot read JSON" in line, line

        await ws.send(text_message("kept", "old routes", service="echo"))
        frames = await until_final(ws, "kept")
        assert frames[-1]["content"] == {"type": "text", "text": "old routes"}, frames
    assert reloads(stack, "rejected") == rejected_before + 2
    assert reloads(stack, "applied") >= 1


async def test_removing_a_backend_ends_its_call_in_flight_and_keeps_the_socket(
    reload_stack: Stack,
) -> None:
    stack = reload_stack
    await reload(stack, routes(stack, spare=True), APPLIED)
    async with ws_connect(stack, stack.token()) as ws:
        await ws.send(text_message("stalled", "stall", service="echo"))
        ack = await recv_json(ws)
        assert ack["content"]["type"] == "ack" and ack["id"] == "stalled", ack

        line = await reload(stack, routes(stack, spare=False), APPLIED)
        assert "removed spare" in line, line

        frames = await until_final(ws, "stalled")
        error = frames[-1]["content"]
        assert error["type"] == "error", frames
        assert error["data"]["code"] == "backend_removed"
        assert "'spare' was removed by a configuration reload" in error["text"]

        await ws.send(text_message("next", "socket open", service="chat"))
        frames = await until_final(ws, "next")
        assert frames[-1]["content"] == {"type": "text", "text": "socket open"}, frames
        await ws.send(text_message("gone", "hello", service="echo"))
        frames = await until_final(ws, "gone")
        assert frames[-1]["content"]["data"]["code"] == "unimplemented", frames
    assert stack.health_status() == 200


async def test_a_changed_routes_file_is_reloaded_without_a_signal(tmp_path: Path) -> None:
    """With CONFIG_WATCH_MS, writing routes.json is enough: the change is noticed and
    applied like a SIGHUP, on the same open socket."""
    stack = Stack.create(tmp_path)
    try:
        stack.start_backends()
        gateway = stack.start_gateway(CONFIG_WATCH_MS="200")
        async with ws_connect(stack, stack.token()) as ws:
            await ws.send(text_message("before", "hello", service="spare-tasks"))
            frames = await until_final(ws, "before")
            assert frames[-1]["content"]["data"]["code"] == "unimplemented", frames
            body = routes(stack, spare=False)
            body["backends"][1]["target"] = f"127.0.0.1:{stack.ports['tasks']}"
            body["backends"][0]["target"] = f"127.0.0.1:{stack.ports['chat']}"
            body["rules"].append({"service": "spare-tasks", "backend": "tasks"})
            write_routes(stack, body)
            await asyncio.to_thread(
                wait_until, lambda: APPLIED in gateway.log(), TIMEOUT_S, "the reload"
            )
            await ws.send(
                json.dumps(
                    {
                        "id": "after",
                        "content": {"type": "task.list"},
                        "context": {"service": "spare-tasks"},
                    }
                )
            )
            frames = await until_final(ws, "after")
            assert frames[-1]["content"]["type"] == "task.list", frames
    finally:
        stack.stop()


async def test_reloads_under_load_drop_no_stream(reload_stack: Stack) -> None:
    """Five reloads while four sockets keep sending: every socket stays open and every
    message gets its final reply."""
    stack = reload_stack
    await reload(stack, routes(stack, spare=False), APPLIED)
    stop = asyncio.Event()
    sent, answered = [0] * 4, [0] * 4

    async def client(n: int) -> None:
        async with ws_connect(stack, stack.token()) as ws:
            while not stop.is_set():
                msg_id = f"c{n}-{sent[n]}"
                sent[n] += 1
                await ws.send(text_message(msg_id, msg_id, service="chat"))
                frames = await until_final(ws, msg_id)
                assert frames[-1]["content"] == {"type": "text", "text": msg_id}, frames
                answered[n] += 1

    clients = [asyncio.create_task(client(n)) for n in range(4)]
    try:
        for spare in (True, False, True, False, True):
            before = list(answered)
            await reload(stack, routes(stack, spare=spare), APPLIED)
            # Every socket answers again after this reload before the next one.
            async with asyncio.timeout(TIMEOUT_S):
                while any(a <= b for a, b in zip(answered, before, strict=True)):
                    assert not any(c.done() for c in clients), [c.exception() for c in clients]
                    await asyncio.sleep(0.05)
    finally:
        stop.set()
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*clients)
    lost = sum(sent) - sum(answered)
    print(f"reload under load: reloads=5 sent={sum(sent)} answered={sum(answered)} lost={lost}")
    assert lost == 0


async def test_a_rotated_backend_certificate_opens_a_new_channel(reload_stack: Stack) -> None:
    """New bytes in the gateway's client certificate for the back-ends (same paths): the
    next reload opens new channels with them, and the open socket keeps working."""
    stack = reload_stack
    await reload(stack, routes(stack, spare=False), APPLIED)
    async with ws_connect(stack, stack.token()) as ws:
        issue_cert(stack.workdir / "certs", "gateway-client", "gateway", server=False, client=True)
        line = await reload(stack, routes(stack, spare=False), APPLIED)
        assert "changed chat, tasks" in line, line
        await ws.send(text_message("rotated", "still here", service="chat"))
        frames = await until_final(ws, "rotated")
        assert frames[-1]["content"] == {"type": "text", "text": "still here"}, frames
