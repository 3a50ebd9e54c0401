"""Per-entity order with real processes: the tasks back-end is killed (SIGKILL) in the
middle of 200 WebSocket messages spread over four entities; the client resends on
error, and every message is applied exactly once, in seq order per entity."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.messages import task_titles
from tests.support.stack import Stack, port_open, running_stack, wait_until

ENTITIES = ("alpha", "beta", "gamma", "delta")
PER_ENTITY = 50
KILL_AFTER = 60  # final replies before the back-end dies
DOWN_S = 1.0
SETTINGS = {
    "BACKEND_TASKS_TIMEOUT_MS": "3000",
    "REDELIVERY_INITIAL_MS": "100",
    "REDELIVERY_MAX_MS": "400",
    "BREAKER_OPEN_MS": "300",
    "MAX_DELIVERY_ATTEMPTS": "1000",
    "RATE_LIMIT_MAX": "100000",
    "WS_MESSAGE_RATE_MAX": "100000",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, **SETTINGS) as s:
        yield s


class Client:
    """One socket; each entity sends its next seq once the previous one has its final
    reply (one message of an entity at a time), and resends a message that got an error."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.finals: asyncio.Queue[str] = asyncio.Queue()
        self.waiting: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.resends = 0
        self.queued = 0

    async def read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            reply_to = frame.get("context", {}).get("reply_to", "")
            if reply_to in self.waiting:
                await self.waiting[reply_to].put(frame)

    async def send(self, entity: str, seq: int) -> None:
        msg_id = f"{entity}-{seq}"
        body = {
            "id": msg_id,
            "seq": seq,
            "content": {"type": "task.create", "text": msg_id},
            "context": {"service": "tasks", "entity": entity},
        }
        frames = self.waiting[msg_id] = asyncio.Queue()
        await self.ws.send(json.dumps(body))
        while True:
            frame = await frames.get()
            kind = frame["content"]["type"]
            if kind == "ack":
                self.queued += frame["content"].get("data", {}).get("status") == "queued"
            elif kind == "error":
                assert frame["content"]["data"]["code"] != "failed_precondition", frame
                self.resends += 1
                await asyncio.sleep(0.1)
                await self.ws.send(json.dumps(body))
            elif frame.get("role") != "event":
                assert kind == "task", frame
                del self.waiting[msg_id]
                await self.finals.put(msg_id)
                return

    async def entity(self, entity: str) -> None:
        for seq in range(1, PER_ENTITY + 1):
            await self.send(entity, seq)


def tasks_backend(stack: Stack) -> None:
    proc = stack.start("tasks", "backend", "tasks")
    wait_until(
        lambda: port_open(stack.ports["tasks"]) or proc.popen.poll() is not None, 20, "tasks"
    )
    assert proc.popen.poll() is None, proc.log()


async def kill_tasks_midway(stack: Stack, client: Client) -> None:
    for _ in range(KILL_AFTER):
        await client.finals.get()
    tasks = next(p for p in stack.processes if p.name == "tasks")
    tasks.popen.send_signal(signal.SIGKILL)
    tasks.popen.wait()
    stack.processes.remove(tasks)
    await asyncio.sleep(DOWN_S)
    await asyncio.to_thread(tasks_backend, stack)


async def test_a_backend_killed_mid_stream_loses_and_reorders_nothing(stack: Stack) -> None:
    token = stack.token("ordered-user")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers) as ws:
        client = Client(ws)
        reader = asyncio.create_task(client.read())
        killer = asyncio.create_task(kill_tasks_midway(stack, client))
        async with asyncio.timeout(120):
            await asyncio.gather(*(client.entity(e) for e in ENTITIES))
            await killer
        reader.cancel()
    wait_until(lambda: stack.health_status() == 200, 30, "tasks healthy again")
    titles = task_titles(stack, token)
    sent = len(ENTITIES) * PER_ENTITY
    counts = Counter(titles)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    lost = sent - len(counts)
    print(
        f"ordered delivery: sent={sent} applied={len(titles)} lost={lost} "
        f"duplicates={duplicates} resent_on_error={client.resends} queued={client.queued}"
    )
    assert (lost, duplicates) == (0, 0)
    for entity in ENTITIES:
        order = [int(t.split("-")[1]) for t in titles if t.startswith(f"{entity}-")]
        assert order == list(range(1, PER_ENTITY + 1)), entity
