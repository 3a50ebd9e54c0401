"""Three gateway replicas sharing one Redis (REDIS_URL): the per-user limits hold across
all of them, the user's event stream reaches a socket on any replica, and a client whose
replica is killed with SIGKILL resumes on another one with every event exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.redis_server import RedisServer, running_redis
from tests.support.replicas import Replica, backends_only, revive, running_replicas
from tests.support.stack import Stack

NAMES = ("a", "b", "c")
RATE_LIMIT = 6
WS_LIMIT = 2
PRODUCED = 200
IN_FLIGHT = 4
FOLLOW_DEADLINE_S = 90.0
WAIT_S = 30.0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with backends_only(Path(tmp_path_factory.mktemp("replicas"))) as stack:
        yield stack


@pytest.fixture(scope="module")
def limited(backends: Stack, redis: RedisServer) -> Iterator[list[Replica]]:
    """Three replicas with small per-user limits."""
    limits = {"RATE_LIMIT_MAX": str(RATE_LIMIT), "MAX_WS_CONN": str(WS_LIMIT)}
    with running_replicas(backends, redis.url, NAMES, **limits) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def roomy(backends: Stack, redis: RedisServer) -> Iterator[list[Replica]]:
    """Three replicas (on other ports) with room for a long stream of one user; SSE
    heartbeats every 500 ms, so that a follower at the end of its stream notices soon."""
    names = tuple(f"{n}-stream" for n in NAMES)
    roomy = {"RATE_LIMIT_MAX": "100000", "SSE_HEARTBEAT_MS": "500"}
    with running_replicas(backends, redis.url, names, **roomy) as replicas:
        yield replicas


@pytest.fixture
def trio(roomy: list[Replica]) -> list[Replica]:
    """The roomy replicas, each one running (a test before may have killed one)."""
    revive(roomy)
    return roomy


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client(replica: Replica) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=replica.stack.ssl_context(), timeout=30)


async def post(replica: Replica, token: str, body: dict[str, Any]) -> httpx.Response:
    async with client(replica) as c:
        return await c.post(f"{replica.base_url}/messages", json=body, headers=auth(token))


def text(msg_id: str) -> dict[str, Any]:
    return {"id": msg_id, "content": {"type": "text", "text": msg_id}}


def seqs_of(answer: dict[str, Any]) -> range:
    """Every seq one answered message holds in the user's log: the message, its deltas
    (left out of the JSON answer, but logged between the two) and its final reply."""
    return range(int(answer["message"]["seq"]), int(answer["replies"][-1]["seq"]) + 1)


def ws_connect(replica: Replica, token: str, resume: int | None = None) -> connect:
    query = "" if resume is None else f"?resume={resume}"
    return connect(
        f"{replica.ws_url}{query}",
        ssl=replica.stack.ssl_context(),
        additional_headers=auth(token),
        open_timeout=WAIT_S,
    )


async def live(ws: ClientConnection) -> None:
    """Send a ``resume`` frame from now on and wait for its ack: after it the socket's
    event stream is live, so nothing sent afterwards can be missed."""
    frame = {"id": "live", "content": {"type": "resume", "data": {"after_seq": 0}}}
    await ws.send(json.dumps(frame))
    async with asyncio.timeout(WAIT_S):
        while True:
            reply = json.loads(await ws.recv())
            if reply["content"]["type"] == "ack" and reply["context"]["reply_to"] == "live":
                return


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The events of a server-sent event stream (comments, i.e. heartbeats, as
    ``{"comment": ...}``)."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")
        elif event:
            yield event
            event = {}


async def take(events: AsyncIterator[dict[str, str]], count: int) -> AsyncIterator[dict[str, str]]:
    """The next ``count`` events of a stream, heartbeats left out."""
    n = 0
    async for event in events:
        if "comment" in event:
            continue
        yield event
        n += 1
        if n == count:
            return


def tally(expected: list[int], received: list[int]) -> tuple[int, int]:
    """(lost, duplicates) of ``received`` against ``expected``."""
    lost = len(set(expected) - set(received))
    return lost, len(received) - len(set(received))


# -- the limits hold across the replicas -----------------------------------------------


async def test_the_rate_limit_holds_across_all_replicas(limited: list[Replica]) -> None:
    token = limited[0].stack.token("rate-user")
    sent = 2 * RATE_LIMIT
    answers = [await post(limited[i % 3], token, text(f"r{i}")) for i in range(sent)]
    codes = [r.status_code for r in answers]
    accepted = [r for r in answers if r.status_code == 200]
    answered = [r for r in accepted if r.json()["replies"][-1]["content"]["type"] == "text"]
    lost = len(accepted) - len(answered)
    print(
        f"replicas rate limit: sent={sent} accepted={len(accepted)} "
        f"refused={codes.count(429)} lost={lost}"
    )
    assert codes == [200] * RATE_LIMIT + [429] * RATE_LIMIT
    # Refused on every replica, each with the time to wait.
    assert {i % 3 for i, code in enumerate(codes) if code == 429} == {0, 1, 2}
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)
    assert lost == 0


async def test_the_websocket_limit_holds_across_all_replicas(limited: list[Replica]) -> None:
    a, b, c = limited
    token = a.stack.token("ws-limit-user")
    async with ws_connect(a, token) as first, ws_connect(b, token):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(c, token):
                pass
        assert refused.value.response.status_code == 429
        await first.close()
        # The count is released once the replica has seen the close.
        async with asyncio.timeout(WAIT_S):
            while True:
                try:
                    async with ws_connect(c, token) as third:
                        await live(third)
                        break
                except InvalidStatus as exc:
                    assert exc.response.status_code == 429
                    await asyncio.sleep(0.05)
    print("replicas websocket limit: opened=2 refused=1 reopened_after_close=1 lost=0")


# -- the event stream crosses replicas ---------------------------------------------------


async def test_an_event_from_one_replica_reaches_sockets_on_the_others(trio: list[Replica]) -> None:
    a, b, c = trio
    token = a.stack.token("cross-user")
    sent = 10
    async with (
        ws_connect(b, token) as ws,
        client(c) as sse_client,
        sse_client.stream("GET", f"{c.base_url}/events/stream", headers=auth(token)) as stream,
    ):
        assert stream.status_code == 200
        events = sse_events(stream)
        assert "comment" in await anext(events)  # the first heartbeat: the stream is live
        await live(ws)
        answers = [await post(a, token, text(f"x{i}")) for i in range(sent)]
        assert [r.status_code for r in answers] == [200] * sent
        expected = [s for r in answers for s in seqs_of(r.json())]
        async with asyncio.timeout(WAIT_S):
            frames = [json.loads(await ws.recv()) for _ in expected]
            shown = [e async for e in take(events, len(expected))]
    received = [int(f["seq"]) for f in frames]
    assert [int(e["id"]) for e in shown] == received
    assert [json.loads(e["data"]) for e in shown] == frames
    users = [f["id"] for f in frames if f["role"] == "user"]
    finals = [
        f["context"]["reply_to"]
        for f in frames
        if f["role"] == "assistant" and f["content"]["type"] == "text"
    ]
    assert users == finals == [f"x{i}" for i in range(sent)]
    lost, duplicates = tally(expected, received)
    print(
        f"replicas cross-replica stream: sent={sent} events={len(expected)} "
        f"received={len(received)} lost={lost} duplicates={duplicates}"
    )
    assert received == expected
    assert lost == duplicates == 0


# -- a replica killed in the middle of a stream ------------------------------------------


@dataclass
class Follower:
    """What a client following its event stream got, in order, and from which replica."""

    received: list[int] = field(default_factory=list)
    per_replica: dict[str, int] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last(self) -> int:
        return self.received[-1] if self.received else 0

    def connecting(self, replica: Replica) -> None:
        self.per_replica[replica.name] = 0

    def got(self, msg: dict[str, Any]) -> None:
        assert msg["content"]["type"] != "reset", msg
        self.received.append(int(msg["seq"]))
        self.per_replica[next(reversed(self.per_replica))] += 1
        self.started.set()


async def follow_ws(
    follower: Follower, replicas: list[Replica], token: str, after: int, done: asyncio.Future[int]
) -> None:
    """Follow the stream on each replica in turn, resuming after the last seq received,
    until the seq ``done`` resolves to has come."""
    for replica in replicas:
        follower.connecting(replica)
        try:
            async with ws_connect(replica, token, resume=follower.last or after) as ws:
                while not (done.done() and follower.last >= done.result()):
                    try:
                        async with asyncio.timeout(0.5):
                            follower.got(json.loads(await ws.recv()))
                    except TimeoutError:
                        continue
                return
        except ConnectionClosed:
            continue  # the replica went away: resume on the next one


async def follow_sse(
    follower: Follower, replicas: list[Replica], token: str, after: int, done: asyncio.Future[int]
) -> None:
    """Like ``follow_ws``, over ``GET /events/stream`` with ``Last-Event-ID``."""
    for replica in replicas:
        follower.connecting(replica)
        headers = {**auth(token), "Last-Event-ID": str(follower.last or after)}
        try:
            async with (
                client(replica) as c,
                c.stream("GET", f"{replica.base_url}/events/stream", headers=headers) as stream,
            ):
                assert stream.status_code == 200
                async for event in sse_events(stream):
                    if "data" in event:
                        assert event.get("event") == "message", event
                        follower.got(json.loads(event["data"]))
                        assert follower.last == int(event["id"])
                    if done.done() and follower.last >= done.result():
                        return
        except httpx.TransportError:
            continue  # the replica went away: resume on the next one


async def produce_and_kill(
    producer: Replica, victim: Replica, token: str, follower: Follower
) -> list[int]:
    """Send ``PRODUCED`` messages through ``producer``, ``IN_FLIGHT`` at a time; half way,
    once the follower got events from ``victim``, kill it with SIGKILL while a batch is in
    flight. Returns every seq the answers acknowledged, in order."""
    acknowledged: set[int] = set()
    async with client(producer) as c:

        async def send(i: int) -> None:
            url, body = f"{producer.base_url}/messages", text(f"p{i}")
            r = await c.post(url, json=body, headers=auth(token))
            assert r.status_code == 200, r.text
            acknowledged.update(seqs_of(r.json()))

        for first in range(0, PRODUCED, IN_FLIGHT):
            batch = [send(i) for i in range(first, min(first + IN_FLIGHT, PRODUCED))]
            if first == PRODUCED // 2:
                async with asyncio.timeout(WAIT_S):
                    await follower.started.wait()
                await asyncio.gather(*batch, asyncio.to_thread(victim.kill))
            else:
                await asyncio.gather(*batch)
    return sorted(acknowledged)


@pytest.mark.parametrize("surface", ["ws", "sse"])
async def test_a_client_resumes_on_another_replica_after_a_kill(
    trio: list[Replica], surface: str
) -> None:
    a, b, c = trio
    token = a.stack.token(f"kill-{surface}-user")
    warm_up = await post(c, token, text("warm-up"))
    assert warm_up.status_code == 200
    after = seqs_of(warm_up.json())[-1]
    follower, done = Follower(), asyncio.get_running_loop().create_future()
    follow = follow_ws if surface == "ws" else follow_sse
    async with asyncio.timeout(FOLLOW_DEADLINE_S), asyncio.TaskGroup() as tasks:
        following = tasks.create_task(follow(follower, [a, b], token, after, done))
        acknowledged = await produce_and_kill(c, a, token, follower)
        done.set_result(acknowledged[-1])
        await following
    lost, duplicates = tally(acknowledged, follower.received)
    print(
        f"replicas kill -9 ({surface}): sent={PRODUCED} events={len(acknowledged)} "
        f"received={len(follower.received)} lost={lost} duplicates={duplicates} "
        f"from={follower.per_replica}"
    )
    assert not a.alive
    # Part of the stream came from the killed replica, the rest from the other one.
    assert list(follower.per_replica) == [a.name, b.name]
    assert all(follower.per_replica.values()), follower.per_replica
    assert acknowledged == list(range(after + 1, acknowledged[-1] + 1))
    assert follower.received == acknowledged
    assert lost == duplicates == 0
