"""WORKERS=2: one supervisor and two worker processes on the same ports, sharing Redis.

Both workers take connections (the kernel spreads them, SO_REUSEPORT); a ticket issued by
one worker opens a WebSocket on the other; /metrics adds up every worker; a worker killed
with SIGKILL is started again while the port keeps serving; SIGTERM drains both and the
supervisor exits 0; workers that keep dying make it give up; and WORKERS=2 without
REDIS_URL is refused at start. Which worker serves a connection is read from /proc.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.redis_server import RedisServer, running_redis
from tests.support.replicas import backends_only
from tests.support.stack import Process, Stack, free_port, wait_until
from tests.support.workers import children, gone, listening_workers, serving_worker

WORKERS = 2
START_S = 60.0
ROUNDS = 64  # each round lands on either worker: missing one 64 times is no real risk
DRAIN_TIMEOUT_S = 5
STOP_S = DRAIN_TIMEOUT_S + 10.0
LISTENING = "gateway listening"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with backends_only(Path(tmp_path_factory.mktemp("workers"))) as stack:
        yield stack


def listening(proc: Process) -> int:
    """How many workers have logged that they listen, since the supervisor started."""
    return proc.log().count(LISTENING)


@contextmanager
def supervisor(backends: Stack, name: str, **env: str) -> Iterator[tuple[Stack, Process]]:
    """``serve`` with WORKERS=2 on ports of its own, once both workers listen."""
    stack = Stack(backends.workdir, secret=backends.secret, ports={**backends.ports})
    stack.ports.update(http=free_port(), grpc=free_port())
    env = {"WORKERS": str(WORKERS), "DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S), **env}
    proc = stack.start(name, "serve", **env)
    try:
        wait_until(
            lambda: listening(proc) == WORKERS or proc.popen.poll() is not None,
            START_S,
            "both workers listening",
        )
        assert proc.popen.poll() is None, proc.log()
        assert len(children(proc.popen.pid)) == WORKERS, proc.log()
        yield stack, proc
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def gateway(backends: Stack, redis: RedisServer) -> Iterator[tuple[Stack, Process]]:
    """The supervisor, with /metrics on the admin port (plain HTTP)."""
    admin = str(free_port())
    with supervisor(backends, "workers", REDIS_URL=redis.url, ADMIN_PORT=admin) as running:
        running[0].ports["admin"] = int(admin)
        yield running


def test_every_worker_listens_on_every_port(gateway: tuple[Stack, Process]) -> None:
    stack, proc = gateway
    workers = children(proc.popen.pid)
    for name in ("http", "grpc", "admin"):
        assert listening_workers(workers, stack.ports[name]) == workers, name
    assert re.search(r"\[worker 1\] gateway\.server: gateway listening", proc.log())


def post_ticket(stack: Stack, token: str, workers: set[int]) -> tuple[str, int | None]:
    """A ticket from ``POST /ws-ticket``, and the worker that issued it."""
    conn = http.client.HTTPSConnection(
        "localhost", stack.ports["http"], context=stack.ssl_context(), timeout=10
    )
    try:
        conn.request("POST", "/ws-ticket", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        assert conn.sock is not None
        pid = serving_worker(workers, stack.ports["http"], conn.sock.getsockname()[1])
        return str(body["ticket"]), pid
    finally:
        conn.close()


def worker_of(stack: Stack, ws: ClientConnection, workers: set[int]) -> int | None:
    return serving_worker(workers, stack.ports["http"], ws.local_address[1])


async def echo(ws: ClientConnection, msg_id: str) -> str:
    """Send a text message; the text of its reply (the frame after the ack)."""
    await ws.send(json.dumps({"id": msg_id, "content": {"type": "text", "text": msg_id}}))
    frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
    return str(frames[1]["content"]["text"])


async def one_per_worker(
    stack: Stack, exits: AsyncExitStack, workers: set[int], user: str
) -> dict[int, ClientConnection]:
    """Open WebSockets (each a new connection) until every worker holds one; keep those."""
    held: dict[int, ClientConnection] = {}
    for i in range(ROUNDS):
        ws = await exits.enter_async_context(
            connect(
                stack.ws_url,
                ssl=stack.ssl_context(),
                additional_headers={"Authorization": f"Bearer {stack.token(f'{user}-{i}')}"},
                open_timeout=10,
            )
        )
        pid = worker_of(stack, ws, workers)
        if pid is not None and pid not in held:
            held[pid] = ws
        else:
            await ws.close()
        if set(held) == workers:
            return held
    raise AssertionError(f"{ROUNDS} connections did not reach every worker: {sorted(held)}")


def is_dir(path: str) -> bool:
    return Path(path).is_dir()


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


async def test_a_ticket_from_one_worker_opens_a_websocket_on_another(
    gateway: tuple[Stack, Process],
) -> None:
    stack, proc = gateway
    workers = children(proc.popen.pid)
    # (issuer, redeemer) of each round, as /proc tells them (None: not found)
    rounds: list[tuple[int | None, int | None]] = []

    def crossed() -> bool:
        return any(a != b and a in workers and b in workers for a, b in rounds)

    for i in range(ROUNDS):
        ticket, issuer = post_ticket(stack, stack.token(f"ticket-user-{i}"), workers)
        url = f"{stack.ws_url}?ticket={ticket}"
        async with connect(url, ssl=stack.ssl_context(), open_timeout=10) as ws:
            redeemer = worker_of(stack, ws, workers)
            assert await echo(ws, f"ticket-{i}") == f"ticket-{i}"  # every round succeeds
        rounds.append((issuer, redeemer))
        if {pid for pair in rounds for pid in pair} >= workers and crossed() and i >= 8:
            break
    assert {pid for pair in rounds for pid in pair} >= workers, rounds
    assert crossed(), rounds


async def test_metrics_add_up_every_worker(gateway: tuple[Stack, Process]) -> None:
    stack, proc = gateway
    workers = children(proc.popen.pid)
    async with AsyncExitStack() as exits:
        held = await one_per_worker(stack, exits, workers, "metrics-user")

        def scrape() -> float:
            with httpx.Client(timeout=10) as c:  # a new connection each time
                text = c.get(f"http://127.0.0.1:{stack.ports['admin']}/metrics").text
            return gauge(text, "dialog_gateway_websocket_connections")

        # Whichever worker answers, it reports the connections of both.
        wait_until(lambda: scrape() == len(held), 10, "both workers' connections counted")
        assert [scrape() for _ in range(8)] == [float(len(held))] * 8


async def test_a_killed_worker_is_started_again_and_the_port_keeps_serving(
    gateway: tuple[Stack, Process],
) -> None:
    stack, proc = gateway
    before = children(proc.popen.pid)
    started = listening(proc)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Connections that reach the victim's listener before it is gone are reset with it
    # (docs/architecture.md); from then on the kernel sends them to the other worker.
    wait_until(lambda: gone(victim), 10, "the killed worker gone")
    statuses = []
    async with httpx.AsyncClient(verify=stack.ssl_context(), timeout=10) as c:
        # A new connection each time, to either worker: every request is served.
        headers = {"Connection": "close", "Authorization": f"Bearer {stack.token('probe')}"}
        ticket_url = f"{stack.base_url}/ws-ticket"
        while listening(proc) == started:
            statuses.append((await c.post(ticket_url, headers=headers)).status_code)
            assert len(statuses) < 10_000, "the worker was not started again"
        statuses += [(await c.post(ticket_url, headers=headers)).status_code for _ in range(20)]
    assert set(statuses) == {200}
    after = children(proc.popen.pid)
    assert len(after) == WORKERS and victim not in after
    assert re.search(rf"worker \d \(pid {victim}\) exited unexpectedly with SIGKILL", proc.log())
    ticket, _issuer = post_ticket(stack, stack.token("after-restart"), after)
    async with connect(f"{stack.ws_url}?ticket={ticket}", ssl=stack.ssl_context()) as ws:
        assert await echo(ws, "after-restart") == "after-restart"


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    backends: Stack, redis: RedisServer
) -> None:
    with supervisor(backends, "workers-drain", REDIS_URL=redis.url) as (stack, proc):
        workers = children(proc.popen.pid)
        metrics_dir = re.search(r"metrics in (\S+)\)", proc.log())
        assert metrics_dir and is_dir(metrics_dir.group(1))
        async with AsyncExitStack() as exits:
            held = await one_per_worker(stack, exits, workers, "drain-user")
            proc.popen.send_signal(signal.SIGTERM)
            for ws in held.values():
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), STOP_S)
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "reconnect")
        assert proc.popen.wait(timeout=STOP_S) == 0, proc.log()
        log = proc.log()
        for pid in workers:
            assert re.search(rf"worker \d \(pid {pid}\) stopped$", log, re.M), log
        assert log.count("closing the listeners") == WORKERS
        assert not children(proc.popen.pid)
        assert not is_dir(metrics_dir.group(1))


async def test_workers_that_keep_dying_make_the_supervisor_give_up(
    backends: Stack, redis: RedisServer
) -> None:
    stack = Stack(backends.workdir, secret=backends.secret, ports={**backends.ports})
    stack.ports.update(http=free_port(), grpc=free_port())
    with socket.socket() as taken:  # the HTTP port, held without SO_REUSEPORT
        taken.bind(("127.0.0.1", stack.ports["http"]))
        taken.listen()
        proc = stack.start("workers-dying", "serve", WORKERS="2", REDIS_URL=redis.url)
        try:
            code = proc.popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stack.stop()
            raise AssertionError(f"the supervisor did not give up:\n{proc.log()}") from None
    log = proc.log()
    assert code == 1, log
    assert "cannot listen on 127.0.0.1" in log
    assert "giving up: 5 worker deaths within 60 s" in log
    assert not children(proc.popen.pid)


def test_several_workers_without_redis_are_refused(backends: Stack) -> None:
    stack = Stack(backends.workdir, secret=backends.secret, ports={**backends.ports})
    stack.ports.update(http=free_port(), grpc=free_port())
    proc = stack.start("workers-refused", "serve", WORKERS="2")
    try:
        code = proc.popen.wait(timeout=30)
    finally:
        stack.stop()
    assert code != 0
    assert "configuration error: WORKERS: 2 workers need REDIS_URL" in proc.log()
    assert "worker 0 started" not in proc.log()
