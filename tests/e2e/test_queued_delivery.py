"""The durable inbound queue, with real processes: a message acknowledged as queued is
delivered once its back-end is back (also after the gateway was killed with SIGKILL),
its replies reach the user's event stream, and one that uses up its attempts lands in
the dead letters, which the CLI lists and replays."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.messages import post, task_titles
from tests.support.replicas import backends_only
from tests.support.stack import Stack, port_open, wait_until

SKIP = ("delta", "ack")
FAST_REDELIVERY = {
    "BACKEND_TASKS_TIMEOUT_MS": "2000",
    "BACKEND_CHAT_TIMEOUT_MS": "2000",
    "REDELIVERY_INITIAL_MS": "100",
    "REDELIVERY_MAX_MS": "400",
    "BREAKER_OPEN_MS": "300",
    "HEALTH_INTERVAL_MS": "200",
    "RATE_LIMIT_MAX": "100000",
}


def task(text: str, msg_id: str) -> dict[str, Any]:
    return {
        "id": msg_id,
        "content": {"type": "task.create", "text": text},
        "context": {"service": "tasks"},
    }


def backend(stack: Stack, name: str) -> None:
    """(Re)start a reference back-end on its port."""
    proc = stack.start(name, "backend", name)
    wait_until(lambda: port_open(stack.ports[name]) or proc.popen.poll() is not None, 20, name)
    assert proc.popen.poll() is None, proc.log()


def stop(stack: Stack, name: str, sig: int = signal.SIGTERM) -> None:
    for proc in [p for p in stack.processes if p.name == name]:
        if sig == signal.SIGKILL:
            proc.popen.kill()
            proc.popen.wait()
        else:
            proc.stop()
        stack.processes.remove(proc)


def gateway(stack: Stack, **env: str) -> None:
    proc = stack.start("gateway", "serve", **{**FAST_REDELIVERY, **env})
    wait_until(
        lambda: stack.health_status() is not None or proc.popen.poll() is not None, 30, "gateway"
    )
    assert proc.popen.poll() is None, proc.log()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with backends_only(tmp_path) as s:
        yield s


async def next_reply(ws: ClientConnection, reply_to: str) -> dict[str, Any]:
    """The final reply (or error) to ``reply_to``; acks, deltas, events and other frames
    are skipped."""
    while True:
        frame = json.loads(await ws.recv())
        answered = frame.get("context", {}).get("reply_to") == reply_to
        if answered and frame.get("role") != "event" and frame["content"]["type"] not in SKIP:
            return frame  # type: ignore[no-any-return]


async def test_queued_messages_are_delivered_in_order_when_the_backend_returns(
    stack: Stack,
) -> None:
    gateway(stack, MAX_DELIVERY_ATTEMPTS="1000")
    stop(stack, "tasks")
    token = stack.token("queue-user")
    headers = {"Authorization": f"Bearer {token}"}
    sent = [f"t{i}" for i in range(5)]
    async with connect(stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers) as ws:
        for i, msg_id in enumerate(sent):
            r = post(stack, token, task(f"task {i}", msg_id))
            assert r.status_code == 202, r.text
        backend(stack, "tasks")
        replies = [await next_reply(ws, msg_id) for msg_id in sent]
    assert [r["content"]["type"] for r in replies] == ["task"] * len(sent)
    seqs = [int(r["seq"]) for r in replies]
    assert seqs == sorted(seqs)
    # Each was applied once, in the order queued; a repeat now gets the final outcome.
    assert task_titles(stack, token) == [f"task {i}" for i in range(5)]
    again = post(stack, token, task("task 0", "t0"))
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["replies"][-1]["content"]["type"] == "task"
    lost = len(sent) - len(replies)
    print(f"queued delivery: sent={len(sent)} delivered={len(replies)} lost={lost}")
    assert lost == 0


def test_a_queued_message_survives_a_sigkill_of_the_gateway(stack: Stack) -> None:
    gateway(stack, MAX_DELIVERY_ATTEMPTS="1000")
    stop(stack, "tasks")
    token = stack.token("kill-user")
    r = post(stack, token, task("survives kill -9", "k1"))
    assert r.status_code == 202, r.text
    stop(stack, "gateway", signal.SIGKILL)
    backend(stack, "tasks")
    gateway(stack, MAX_DELIVERY_ATTEMPTS="1000")
    wait_until(lambda: stack.health_status() == 200, 30, "the gateway sees tasks")
    wait_until(
        lambda: task_titles(stack, token) == ["survives kill -9"], 30, "the queued task applied"
    )
    # Exactly once, even when the dead gateway had started a delivery before it died.
    assert task_titles(stack, token) == ["survives kill -9"]
    print("kill -9 after 202: sent=1 applied=1 lost=0")


def dead_letters_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "dead-letters", *args],
        cwd=stack.workdir,
        env=stack.env(**FAST_REDELIVERY),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_attempts_used_up_go_to_the_dead_letters_and_replay_from_there(
    stack: Stack,
) -> None:
    gateway(stack, MAX_DELIVERY_ATTEMPTS="2")
    stop(stack, "tasks")
    token = stack.token("dead-user")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers) as ws:
        assert post(stack, token, task("dead letter", "d1")).status_code == 202
        error = await next_reply(ws, "d1")
    assert error["content"]["type"] == "error"
    assert "dead letters" in error["content"]["text"]

    listed = dead_letters_cli(stack)
    assert listed.returncode == 0, listed.stderr
    [dead] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (dead["message_id"], dead["backend"], dead["user"]) == ("d1", "tasks", "dead-user")
    assert dead["attempts"] == 2
    assert dead["message"]["content"] == {"type": "task.create", "text": "dead letter"}

    backend(stack, "tasks")
    wait_until(lambda: stack.health_status() == 200, 30, "the gateway sees tasks again")
    replayed = dead_letters_cli(stack, "--replay", dead["entry_id"])
    assert replayed.returncode == 0, replayed.stderr
    wait_until(
        lambda: task_titles(stack, token) == ["dead letter"], 30, "the replayed task applied"
    )
    assert dead_letters_cli(stack).stdout == ""
    missing = dead_letters_cli(stack, "--replay", dead["entry_id"])
    assert missing.returncode != 0 and "no dead letter" in missing.stderr


def test_the_cli_fails_clearly_when_the_store_cannot_be_reached(tmp_path: Path) -> None:
    env = {**os.environ, "JWT_SECRET": "x" * 40, "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "dead-letters"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "message store" in done.stderr


async def test_a_message_in_flight_when_its_gateway_dies_is_delivered_after_its_lease(
    tmp_path: Path,
) -> None:
    """Acknowledged, forwarded, then SIGKILL while the back-end works on it: the message
    was kept in the store before its ack, so the gateway started again queues it once its
    in-flight lease has passed, and its reply reaches the resumed event stream."""
    s = Stack.create(tmp_path)
    lease = {"BACKEND_CHAT_TIMEOUT_MS": "2000", "INFLIGHT_MARGIN_MS": "1000"}
    try:
        backend(s, "tasks")
        s.start_recorder()
        gateway(s, **lease)
        wait_until(lambda: s.health_status() == 200, 30, "gateway healthy")
        headers = {"Authorization": f"Bearer {s.token('inflight-user')}"}
        body = {"id": "k1", "content": {"type": "text", "text": "sleep 1500"}}
        async with connect(s.ws_url, ssl=s.ssl_context(), additional_headers=headers) as ws:
            await ws.send(json.dumps(body))
            ack = json.loads(await ws.recv())
            assert ack["content"] == {"type": "ack"}
            wait_until(lambda: "k1" in s.recorder_file.read_text(), 10, "forwarded")
            stop(s, "gateway", signal.SIGKILL)
        gateway(s, **lease)
        resume = f"{s.ws_url}?resume={ack['seq']}"
        async with connect(resume, ssl=s.ssl_context(), additional_headers=headers) as ws:
            async with asyncio.timeout(30):
                reply = await next_reply(ws, "k1")
        assert (reply["content"]["type"], reply["content"]["text"]) == ("text", "sleep 1500")
        received = [json.loads(line)["id"] for line in s.recorder_file.read_text().splitlines()]
        print(
            f"in flight at kill -9: sent=1 answered=1 lost=0 "
            f"deliveries_to_backend={received.count('k1')}"
        )
        assert received.count("k1") >= 2  # at least once: the first delivery died with it
    finally:
        s.stop()
