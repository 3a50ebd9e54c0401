"""The shared store goes away and comes back: two gateway replicas on a private Redis
(append-only file, fsync on every write) that is killed with SIGKILL and started again on
the same port and data directory. While it is down, every surface refuses at once with
``store_unavailable`` (HTTP 503, gRPC UNAVAILABLE, an error frame); once it is back, the
replicas recover without a restart, and everything acknowledged before the crash is still
there: the event log with its seqs, the idempotent outcomes, the entity order and the
queued messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.redis_server import RedisServer, running_redis
from tests.support.replicas import Replica, backends_only, running_replicas
from tests.support.stack import Stack, port_open, wait_until

CHATS = 20
EDITS = 3
QUEUED = 5
WAIT_S = 60.0
REPLICA_ENV = {
    "RATE_LIMIT_MAX": "100000",
    "MAX_DELIVERY_ATTEMPTS": "1000",
    "BACKEND_TASKS_TIMEOUT_MS": "2000",
    "REDELIVERY_INITIAL_MS": "100",
    "REDELIVERY_MAX_MS": "400",
    "BREAKER_OPEN_MS": "300",
}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Stack]:
    with backends_only(tmp_path / "stack") as stack:
        yield stack


@pytest.fixture
def replicas(backends: Stack, redis: RedisServer) -> Iterator[list[Replica]]:
    with running_replicas(backends, redis.url, ("a", "b"), **REPLICA_ENV) as started:
        yield started


# -- clients -----------------------------------------------------------------------------


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(replica: Replica, token: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(verify=replica.stack.ssl_context(), timeout=30) as c:
        return c.post(f"{replica.base_url}/messages", json=body, headers=auth(token))


def answered(replica: Replica, token: str, body: dict[str, Any], *, unless: int) -> httpx.Response:
    """Send ``body`` until its answer is not ``unless``, as a client retrying with the same
    id does; that answer. 503: refused while the store is down; 202: queued (a back-end is
    not accepting yet), or a repeat of a queued message that is not delivered yet."""
    answers: list[httpx.Response] = []

    def other() -> bool:
        answers.append(post(replica, token, body))
        return answers[-1].status_code != unless

    wait_until(other, WAIT_S, f"an answer to {body.get('id', body)} other than {unless}")
    return answers[-1]


def chat(msg_id: str) -> dict[str, Any]:
    return {"id": msg_id, "content": {"type": "text", "text": msg_id}}


def edit(seq: int) -> dict[str, Any]:
    """A message in the order of the entity ``doc``."""
    return {**chat(f"doc-{seq}"), "seq": str(seq), "context": {"entity": "doc"}}


def task(msg_id: str) -> dict[str, Any]:
    return {
        "id": msg_id,
        "content": {"type": "task.create", "text": msg_id},
        "context": {"service": "tasks"},
    }


def titles(replica: Replica, token: str) -> list[str]:
    listing = {"content": {"type": "task.list"}, "context": {"service": "tasks"}}
    r = answered(replica, token, listing, unless=202)
    assert r.status_code == 200, r.text
    return [t["title"] for t in r.json()["replies"][-1]["content"]["data"]["tasks"]]


def get_events(replica: Replica, token: str) -> httpx.Response:
    """``GET /events/stream`` when it is refused (the answer is read whole)."""
    with httpx.Client(verify=replica.stack.ssl_context(), timeout=30) as c:
        return c.get(f"{replica.base_url}/events/stream", headers=auth(token))


def replayed(replica: Replica, token: str, body: dict[str, Any]) -> bool:
    """True when a repeat of ``body`` is answered from its recorded outcome."""
    r = post(replica, token, body)
    return r.status_code == 200 and r.headers.get("idempotent-replayed") == "true"


def delivered(replica: Replica, token: str, count: int) -> list[str]:
    """The user's task titles, once there are ``count`` of them."""
    applied: list[str] = []

    def all_there() -> bool:
        applied[:] = titles(replica, token)
        return len(applied) >= count

    wait_until(all_there, WAIT_S, f"{count} tasks applied")
    return applied


def health(replica: Replica) -> tuple[int, dict[str, Any]]:
    with httpx.Client(verify=replica.stack.ssl_context(), timeout=30) as c:
        r = c.get(f"{replica.base_url}/health")
    return r.status_code, r.json()


def logged(replica: Replica, token: str, after: int, through: int) -> dict[int, dict[str, Any]]:
    """The user's events after seq ``after`` through seq ``through``, by seq, resumed from
    the event log with ``Last-Event-ID``."""
    events: dict[int, dict[str, Any]] = {}
    headers = {**auth(token), "Last-Event-ID": str(after)}
    with (
        httpx.Client(verify=replica.stack.ssl_context(), timeout=30) as c,
        c.stream("GET", f"{replica.base_url}/events/stream", headers=headers) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                assert int(event["seq"]) not in events, event
                events[int(event["seq"])] = event
                if int(event["seq"]) >= through:
                    break
    return events


async def grpc_send(replica: Replica, token: str, msg_id: str) -> grpc.StatusCode:
    msg = message_pb2.Message(id=msg_id, content=message_pb2.Content(type="text", text=msg_id))
    creds = grpc.ssl_channel_credentials(replica.stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(replica.grpc_target, creds) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg), metadata=(("authorization", f"Bearer {token}"),)
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def ws_answers(ws: ClientConnection, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Send a message on an open socket; the frames that answer it, through its final
    reply or error."""
    await ws.send(json.dumps(body))
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while not frames or frames[-1]["content"]["type"] in ("ack", "delta"):
            frame = json.loads(await ws.recv())
            if frame.get("context", {}).get("reply_to") == body["id"]:
                frames.append(frame)
    return frames


# -- back-ends ---------------------------------------------------------------------------


def stop_backend(stack: Stack, name: str) -> None:
    for proc in [p for p in stack.processes if p.name == name]:
        proc.stop()
        stack.processes.remove(proc)


def start_backend(stack: Stack, name: str) -> None:
    proc = stack.start(name, "backend", name)
    wait_until(lambda: port_open(stack.ports[name]) or proc.popen.poll() is not None, 20, name)
    assert proc.popen.poll() is None, proc.log()


# -- the outage --------------------------------------------------------------------------


def store_refused(r: httpx.Response) -> bool:
    return r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"


async def refused_while_down(
    replicas: list[Replica], token: str, ws: ClientConnection
) -> dict[str, bool]:
    """Try every surface with the store down: by message id (or surface), True where
    the refusal is a clear ``store_unavailable``."""
    a, b = replicas
    refused = {
        f"down-{r.name}": store_refused(post(r, token, chat(f"down-{r.name}"))) for r in replicas
    }
    refused[f"doc-{EDITS + 1}"] = store_refused(post(b, token, edit(EDITS + 1)))
    refused["grpc-down"] = await grpc_send(a, token, "grpc-down") == grpc.StatusCode.UNAVAILABLE
    [frame] = await ws_answers(ws, chat("ws-down"))
    refused["ws-down"] = frame["content"]["data"]["code"] == "store_unavailable"
    refused["GET /events/stream"] = store_refused(get_events(b, token))
    try:
        async with connect(b.ws_url, ssl=b.stack.ssl_context(), additional_headers=auth(token)):
            refused["GET /ws"] = False
    except InvalidStatus as exc:
        refused["GET /ws"] = exc.response.status_code == 503
    return refused


@dataclass(frozen=True)
class Acked:
    """A message the gateway acknowledged before the crash."""

    body: dict[str, Any]
    seq: int  # its seq in the user's event log
    final: dict[str, Any] | None  # its final reply; None while it is queued
    answer: dict[str, Any] | None = None  # the HTTP answer, when it was answered over HTTP


def acknowledge(replicas: list[Replica], token: str, backends: Stack) -> list[Acked]:
    """Answered chats and entity edits over HTTP, then tasks queued while ``tasks`` is down."""
    acked = []
    bodies = [chat(f"c{i}") for i in range(CHATS)] + [edit(s) for s in range(1, EDITS + 1)]
    for n, body in enumerate(bodies):
        r = post(replicas[n % 2], token, body)
        assert r.status_code == 200, r.text
        acked.append(
            Acked(body, int(r.json()["message"]["seq"]), r.json()["replies"][-1], r.json())
        )
    stop_backend(backends, "tasks")
    for n in range(QUEUED):
        r = post(replicas[n % 2], token, task(f"q{n}"))
        assert r.status_code == 202, r.text
        acked.append(Acked(task(f"q{n}"), int(r.json()["message"]["seq"]), None))
    return acked


def kept(replicas: list[Replica], token: str, n: int, acked: Acked, events: dict[int, Any]) -> bool:
    """True when ``acked`` survived: it is in the event log at its seq (and its final reply
    at its own), and a repeat of it (on another replica than before) replays its outcome."""
    logged = events.get(acked.seq, {}).get("id") == acked.body["id"]
    if acked.final is not None:
        logged = logged and events.get(int(acked.final["seq"])) == acked.final
    r = answered(replicas[(n + 1) % 2], token, acked.body, unless=202)
    if not logged or r.status_code != 200 or r.headers.get("idempotent-replayed") != "true":
        return False
    replay = r.json()
    if acked.answer is not None:
        return replay == acked.answer  # the same message, seq, timestamp and replies
    final = replay["replies"][-1]
    if acked.final is None:  # it was queued: by now, the outcome of its delivery
        return int(replay["message"]["seq"]) == acked.seq and final["content"]["type"] == "task"
    return int(replay["message"]["seq"]) == acked.seq and final == acked.final


async def test_nothing_acknowledged_is_lost_when_redis_restarts(
    replicas: list[Replica], redis: RedisServer, backends: Stack
) -> None:
    a, b = replicas
    token = a.stack.token("restart-user")
    pids = [r.process.popen.pid for r in replicas if r.process is not None]
    warm_up = post(a, token, chat("warm-up"))
    assert warm_up.status_code == 200
    after = int(warm_up.json()["replies"][-1]["seq"])
    acked = acknowledge(replicas, token, backends)

    async with connect(a.ws_url, ssl=a.stack.ssl_context(), additional_headers=auth(token)) as ws:
        # Answered over the socket: its reply comes from the event stream, which is live.
        [ack, *_, final] = await ws_answers(ws, chat("ws-up"))
        acked.append(Acked(chat("ws-up"), int(ack["seq"]), final))
        # Its outcome is recorded for repeats just after its final reply is logged; a crash
        # in between would leave its id pending (a repeat gets 409 until that expires).
        wait_until(lambda: replayed(b, token, chat("ws-up")), WAIT_S, "its outcome recorded")
        # The crash; only the store is missing (tasks comes back meanwhile).
        redis.stop(crash=True)
        start_backend(backends, "tasks")
        for replica in replicas:
            wait_until(
                lambda r=replica: health(r)[1]["backends"]["tasks"]["status"] == "SERVING",
                WAIT_S,
                f"replica {replica.name} sees tasks again",
            )
            # Degraded: the store does not answer, so the replica is not ready.
            wait_until(
                lambda r=replica: health(r)[1].get("store") == {"status": "NOT_SERVING"},
                WAIT_S,
                f"replica {replica.name} reports the store down",
            )
        down_health = {r.name: health(r) for r in replicas}
        refused = await refused_while_down(replicas, token, ws)
    for name, (code, body) in down_health.items():
        print(f"redis down: replica {name} /health {code} {body['status']} store={body['store']}")
        assert (code, body["status"]) == (503, "NOT_SERVING")
    print(f"redis down: refused {refused}")
    assert all(refused.values()), refused

    port = redis.port
    redis.start()
    assert redis.port == port
    for replica in replicas:
        wait_until(lambda r=replica: health(r)[0] == 200, WAIT_S, f"{replica.name} recovered")
        assert health(replica)[1]["store"] == {"status": "SERVING"}

    # Recovered without a restart; what was refused left nothing behind: sent again, each
    # is a new message (not a replay), with a seq after every seq acknowledged before.
    through = int(final["seq"])
    chats = ("down-a", "down-b", "grpc-down", "ws-down")
    again = [answered(replicas[n % 2], token, chat(i), unless=503) for n, i in enumerate(chats)]
    again.append(answered(a, token, edit(EDITS + 1), unless=503))
    assert [r.status_code for r in again] == [200] * len(again), [r.text for r in again]
    assert not any("idempotent-replayed" in r.headers for r in again)
    assert min(int(r.json()["message"]["seq"]) for r in again) > through
    assert [r.process.popen.pid for r in replicas if r.alive and r.process] == pids
    gap = post(b, token, edit(EDITS + 3))
    assert gap.status_code == 409 and gap.json()["error"]["expected_seq"] == EDITS + 2

    # Everything acknowledged before the crash is still there, the queued tasks delivered.
    queued = [m.body["id"] for m in acked if m.final is None]
    applied = delivered(a, token, len(queued))
    events = logged(b, token, after, through)
    lost = [m.body["id"] for n, m in enumerate(acked) if not kept(replicas, token, n, m, events)]
    print(
        f"redis restart: sent={len(acked)} acknowledged={len(acked)} lost={len(lost)} "
        f"refused_while_down={len(refused)} events_resumed={len(events)} "
        f"queued_applied_in_order={applied}"
    )
    assert applied == queued  # each exactly once, in the order queued
    assert sorted(events) == list(range(after + 1, through + 1))
    assert not lost, lost
