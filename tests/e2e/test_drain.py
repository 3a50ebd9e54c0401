"""SIGTERM drains the gateway: health turns NOT_SERVING at once, new work is refused, work
in flight is answered (or reported as an error at the deadline), every connection ends
with a reason to reconnect, and the process exits 0 within DRAIN_TIMEOUT_S.

The back-end in place of ``chat`` is the recorder (tests/support/recorder.py): ``sleep
MS`` answers after MS milliseconds, ``stall`` never answers. ``tasks`` is the real one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.e2e.test_grpc import channel, md, text
from tests.e2e.test_websocket import recv_json, text_message, ws_connect
from tests.support.recorder import received
from tests.support.stack import Process, Stack, port_open, wait_until

DRAIN_TIMEOUT_S = 10
# Start-up of the exit and the last close handshakes, past DRAIN_TIMEOUT_S at most.
EXIT_MARGIN_S = 3
SLOW = "sleep 800"  # each message stays in flight for 0.8 s
SEND_EVERY_S = 0.05
DRAINING = "draining"


def start(workdir: Path, drain_timeout_s: int) -> Stack:
    stack = Stack.create(workdir)
    stack.start_recorder()
    tasks = stack.start("tasks", "backend", "tasks")
    wait_until(
        lambda: port_open(stack.ports["tasks"]) or tasks.popen.poll() is not None, 20, "tasks"
    )
    stack.start_gateway(DRAIN_TIMEOUT_S=str(drain_timeout_s), RATE_LIMIT_MAX="100000")
    return stack


@pytest.fixture
def draining_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = start(tmp_path, DRAIN_TIMEOUT_S)
    try:
        yield stack
    finally:
        stack.stop()


def gateway_of(stack: Stack) -> Process:
    return next(p for p in stack.processes if p.name == "gateway")


@dataclass
class Ledger:
    """What one client sent and what came back for it, by message id."""

    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)  # id -> error code
    refused: bool = False  # a message was refused because the gateway drains
    ended: str = ""  # how the connection ended (close code and reason, or status)

    def record(self, kind: str, is_event: bool, reply_to: str, data: dict[str, Any]) -> None:
        if not reply_to:
            return
        if kind == "ack":
            self.acked.add(reply_to)
        elif kind == "error":
            self.errors[reply_to] = str(data.get("code"))
            self.refused |= data.get("code") == DRAINING and reply_to not in self.acked
        elif kind != "delta" and not is_event:
            self.answered.add(reply_to)

    def record_json(self, frame: dict[str, Any]) -> None:
        content = frame["content"]
        reply_to = frame.get("context", {}).get("reply_to", "")
        self.record(
            content["type"], frame.get("role") == "event", reply_to, content.get("data", {})
        )

    def record_pb(self, msg: message_pb2.Message) -> None:
        data = {"code": msg.content.data["code"]} if "code" in msg.content.data else {}
        is_event = msg.role == message_pb2.ROLE_EVENT
        self.record(msg.content.type, is_event, msg.context.reply_to, data)

    @property
    def in_flight(self) -> set[str]:
        return self.acked - self.answered - set(self.errors)


async def ws_client(stack: Stack, name: str, ledger: Ledger) -> None:
    """Sends a slow message every SEND_EVERY_S until a message is refused; reads every
    frame until the gateway closes the socket."""
    async with ws_connect(stack, stack.token(name)) as ws:

        async def keep_sending(ws: ClientConnection) -> None:
            for i in range(10_000):
                if ledger.refused:
                    return
                msg_id = f"{name}-{i}"
                ledger.sent.add(msg_id)
                await ws.send(text_message(msg_id, SLOW))
                await asyncio.sleep(SEND_EVERY_S)

        sender = asyncio.create_task(keep_sending(ws), name=f"{name}-sender")
        try:
            while True:
                ledger.record_json(await recv_json(ws, 30))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the gateway closed without a close frame"
            ledger.ended = f"{exc.rcvd.code} {exc.rcvd.reason}"
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


async def http_client(stack: Stack, name: str, ledger: Ledger) -> None:
    """POSTs slow messages one after the other until one is refused."""
    headers = {"Authorization": f"Bearer {stack.token(name)}"}
    async with httpx.AsyncClient(verify=stack.ssl_context(), timeout=30) as client:
        for i in range(10_000):
            msg_id = f"{name}-{i}"
            body = {"id": msg_id, "content": {"type": "text", "text": SLOW}}
            ledger.sent.add(msg_id)
            # Over HTTP the request itself is acknowledged: it must get an answer.
            ledger.acked.add(msg_id)
            try:
                try:
                    r = await client.post(f"{stack.base_url}/messages", json=body, headers=headers)
                except httpx.RemoteProtocolError:
                    # Sent on a kept-alive connection just as the gateway closed it (the
                    # HTTP/1.1 keep-alive race): send it again, same id, on a new connection.
                    async with httpx.AsyncClient(verify=stack.ssl_context(), timeout=30) as fresh:
                        r = await fresh.post(
                            f"{stack.base_url}/messages", json=body, headers=headers
                        )
            except httpx.ConnectError:  # never sent: the listener has closed
                ledger.sent.discard(msg_id)
                ledger.acked.discard(msg_id)
                ledger.ended = "connection refused"
                return
            if r.status_code != 200:
                ledger.errors[msg_id] = r.json()["error"]["code"]
                ledger.ended = f"{r.status_code} {r.headers.get('connection')}"
                return
            for reply in r.json()["replies"]:
                ledger.record_json(reply)


async def grpc_send_client(stack: Stack, name: str, ledger: Ledger) -> None:
    """Calls ``Send`` with slow messages one after the other until a call fails."""
    async with channel(stack) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        for i in range(10_000):
            msg_id = f"{name}-{i}"
            ledger.sent.add(msg_id)
            call = stub.Send(
                gateway_pb2.SendRequest(message=text(msg_id, SLOW)), metadata=md(stack.token(name))
            )
            try:
                async for response in call:
                    ledger.record_pb(response.message)
            except grpc.aio.AioRpcError as exc:
                ledger.errors[msg_id] = exc.code().name
                ledger.ended = f"{exc.code().name} {exc.details()}"
                return


async def grpc_converse_client(stack: Stack, name: str, ledger: Ledger) -> None:
    """One ``Converse`` stream: a slow message every SEND_EVERY_S until one is refused."""

    ended = asyncio.Event()

    async def requests() -> AsyncIterator[gateway_pb2.ConverseRequest]:
        for i in range(10_000):
            if ledger.refused:
                break
            msg_id = f"{name}-{i}"
            ledger.sent.add(msg_id)
            yield gateway_pb2.ConverseRequest(message=text(msg_id, SLOW))
            await asyncio.sleep(SEND_EVERY_S)
        await ended.wait()  # keep the stream open: the gateway ends it

    async with channel(stack) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Converse(requests(), metadata=md(stack.token(name)))
        try:
            async for response in call:
                ledger.record_pb(response.message)
            ledger.ended = "OK"
        except grpc.aio.AioRpcError as exc:
            ledger.ended = f"{exc.code().name} {exc.details()}"
        finally:
            ended.set()


async def sse_subscriber(stack: Stack, name: str, events: list[str]) -> None:
    """``GET /events/stream`` until the gateway ends it; the event names, in order."""
    headers = {"Authorization": f"Bearer {stack.token(name)}"}
    async with (
        httpx.AsyncClient(verify=stack.ssl_context(), timeout=30) as client,
        client.stream("GET", f"{stack.base_url}/events/stream", headers=headers) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))


async def grpc_subscriber(stack: Stack, name: str) -> str:
    """``Subscribe`` until the gateway ends it; the final status."""
    async with channel(stack) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Subscribe(
            gateway_pb2.SubscribeRequest(), metadata=md(stack.token(name))
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name} {exc.details()}"
        return "OK"


async def health_while_draining(stack: Stack) -> tuple[int, str, str]:
    """``/health`` and the gRPC health service, once the drain shows."""
    async with httpx.AsyncClient(verify=stack.ssl_context(), timeout=5) as client:
        deadline = time.monotonic() + 5
        while (r := await client.get(f"{stack.base_url}/health")).status_code == 200:
            assert time.monotonic() < deadline, "/health never reported the drain"
            await asyncio.sleep(0.02)
    async with channel(stack) as ch:
        check = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(check.status)
    return r.status_code, r.json()["status"], status


async def new_work_is_refused(stack: Stack) -> None:
    """While the gateway drains, a new socket, stream or call gets a clear refusal."""
    token = stack.token("newcomer")
    with pytest.raises(InvalidStatus) as ws_refusal:
        async with ws_connect(stack, token):
            pass
    assert ws_refusal.value.response.status_code == 503
    assert json.loads(ws_refusal.value.response.body or b"{}")["error"]["code"] == DRAINING
    async with httpx.AsyncClient(verify=stack.ssl_context(), timeout=5) as client:
        headers = {"Authorization": f"Bearer {token}"}
        r = await client.get(f"{stack.base_url}/events/stream", headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (503, DRAINING)
        assert r.headers["connection"] == "close"
    async with channel(stack) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=text("new", "hi")), metadata=md(token)
        )
        with pytest.raises(grpc.aio.AioRpcError) as grpc_refusal:
            [r async for r in call]
    assert grpc_refusal.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "draining" in (grpc_refusal.value.details() or "")


async def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_sigterm_under_load_answers_what_was_acknowledged(draining_stack: Stack) -> None:
    stack = draining_stack
    gateway = gateway_of(stack)
    ledgers = {name: Ledger() for name in ("ws-a", "ws-b", "ws-c", "http-a", "http-b")}
    ledgers |= {"send": Ledger(), "converse": Ledger()}
    sse_events: list[str] = []
    clients = [
        *(ws_client(stack, n, ledgers[n]) for n in ("ws-a", "ws-b", "ws-c")),
        *(http_client(stack, n, ledgers[n]) for n in ("http-a", "http-b")),
        grpc_send_client(stack, "send", ledgers["send"]),
        grpc_converse_client(stack, "converse", ledgers["converse"]),
        sse_subscriber(stack, "http-a", sse_events),
    ]
    tasks = [asyncio.create_task(c) for c in clients]
    subscribe = asyncio.create_task(grpc_subscriber(stack, "converse"))
    # Under load: every client has had messages answered, and has some in flight.
    await wait_for(lambda: all(len(ledger.answered) >= 2 for ledger in ledgers.values()), 30,
                   "every client to get answers")  # fmt: skip
    in_flight = {name: set(ledger.in_flight) for name, ledger in ledgers.items()}
    started = time.monotonic()
    gateway.popen.send_signal(signal.SIGTERM)

    http_status, body_status, grpc_status = await health_while_draining(stack)
    assert (http_status, body_status, grpc_status) == (503, "DRAINING", "NOT_SERVING")
    await new_work_is_refused(stack)
    code = await asyncio.to_thread(gateway.popen.wait, DRAIN_TIMEOUT_S + EXIT_MARGIN_S)
    elapsed_s = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    ended_subscribe = await asyncio.wait_for(subscribe, 10)

    sent = sum(len(ledger.sent) for ledger in ledgers.values())
    answered = sum(len(ledger.answered) for ledger in ledgers.values())
    errors = sum(len(ledger.errors) for ledger in ledgers.values())
    lost = sum(len(ledger.in_flight) for ledger in ledgers.values())
    print(f"drain: sent={sent} answered={answered} errors_reported={errors} lost={lost}")
    assert lost == 0, {name: ledger.in_flight for name, ledger in ledgers.items()}
    assert code == 0, gateway.log()
    assert elapsed_s < DRAIN_TIMEOUT_S + EXIT_MARGIN_S
    # Work in flight at SIGTERM was answered, not cut short; only new work was refused.
    assert sum(len(ids) for ids in in_flight.values()) > 0
    for name, ledger in ledgers.items():
        # A call that reaches the gRPC port as it closes may be cancelled by the gRPC runtime
        # before the gateway sees it: never acknowledged, it was never admitted either.
        refusals = {DRAINING, "UNAVAILABLE", "CANCELLED"}
        assert set(ledger.errors.values()) <= refusals, name
        # Over HTTP a request in flight may not be admitted yet: its answer may be a refusal.
        if not name.startswith("http"):
            assert in_flight[name] <= ledger.answered, name
            assert not set(ledger.errors) & ledger.acked, name
    for name in ("ws-a", "ws-b", "ws-c"):
        assert ledgers[name].ended == "1001 reconnect", name
    for name in ("http-a", "http-b"):
        # Refused with 503 and Connection: close, or, once the listener closed, at connect.
        assert ledgers[name].ended in ("503 close", "connection refused"), name
    assert ledgers["send"].ended.startswith(("UNAVAILABLE", "CANCELLED")), ledgers["send"].ended
    assert ledgers["converse"].ended == "UNAVAILABLE the gateway is draining; reconnect"
    assert ended_subscribe == "UNAVAILABLE the gateway is draining; reconnect"
    assert "message" in sse_events and sse_events[-1] == "reconnect", sse_events


async def test_work_still_running_at_the_deadline_is_reported(tmp_path: Path) -> None:
    drain_timeout_s = 2
    stack = start(tmp_path, drain_timeout_s)
    try:
        gateway = gateway_of(stack)
        token = stack.token("stuck")
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            ws_connect(stack, token) as ws,
            httpx.AsyncClient(verify=stack.ssl_context(), timeout=30) as client,
            channel(stack) as ch,
        ):
            stub = gateway_pb2_grpc.GatewayStub(ch)
            await ws.send(text_message("ws", "stall"))
            assert (await recv_json(ws))["content"]["type"] == "ack"
            post = asyncio.create_task(
                client.post(
                    f"{stack.base_url}/messages",
                    json={"id": "http", "content": {"type": "text", "text": "stall"}},
                    headers=headers,
                )
            )
            send = stub.Send(gateway_pb2.SendRequest(message=text("send", "stall")),
                             metadata=md(token))  # fmt: skip
            assert (await send.read()).message.content.type == "ack"
            requests: asyncio.Queue[gateway_pb2.ConverseRequest] = asyncio.Queue()
            await requests.put(gateway_pb2.ConverseRequest(message=text("converse", "stall")))
            converse = stub.Converse(_from_queue(requests), metadata=md(token))
            assert (await converse.read()).message.content.type == "ack"
            await wait_for(lambda: len(received(stack.recorder_file)) == 4, 10, "the back-end")

            started = time.monotonic()
            gateway.popen.send_signal(signal.SIGTERM)

            error = await _until_error(ws)
            assert (error["context"]["reply_to"], error["content"]["data"]["code"]) == (
                "ws",
                DRAINING,
            )
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "reconnect")
            r = await post
            assert (r.status_code, r.json()["error"]["code"]) == (503, DRAINING)
            with pytest.raises(grpc.aio.AioRpcError) as send_failed:
                await send.read()
            assert send_failed.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "send it again" in (send_failed.value.details() or "")
            reported = (await converse.read()).message
            assert (reported.context.reply_to, reported.content.type) == ("converse", "error")
            assert reported.content.data["code"] == DRAINING
            with pytest.raises(grpc.aio.AioRpcError) as converse_ended:
                await converse.read()
            assert converse_ended.value.code() is grpc.StatusCode.UNAVAILABLE
        code = await asyncio.to_thread(gateway.popen.wait, drain_timeout_s + EXIT_MARGIN_S)
        elapsed_s = time.monotonic() - started
        assert code == 0, gateway.log()
        assert elapsed_s < drain_timeout_s + EXIT_MARGIN_S
    finally:
        stack.stop()


async def _from_queue(
    queue: asyncio.Queue[gateway_pb2.ConverseRequest],
) -> AsyncIterator[gateway_pb2.ConverseRequest]:
    while True:
        yield await queue.get()


async def _until_error(ws: ClientConnection) -> dict[str, Any]:
    while (frame := await recv_json(ws, 30))["content"]["type"] != "error":
        pass
    return frame


def test_up_stops_the_gateway_then_the_backends_on_sigterm(tmp_path: Path) -> None:
    stack = Stack.create(tmp_path)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "gateway", "up"],
        cwd=tmp_path, env=stack.env(DRAIN_TIMEOUT_S="3"), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: stack.health_status() == 200 or up.poll() is not None, 60, "health")
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=3 + EXIT_MARGIN_S + 10) == 0
        output = (tmp_path / "up.log").read_text()
        # The gateway drained and stopped before its back-ends were told to stop.
        steps = ("draining", "closing the listeners", "stopping the back-ends", "adapter stopping")
        assert all(step in output for step in steps), output
        assert sorted(steps, key=output.index) == list(steps), output
        for name in ("http", "grpc", "chat", "tasks"):
            assert not port_open(stack.ports[name]), name
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
