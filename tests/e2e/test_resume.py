"""Resuming an event stream: what was missed, in order; a reset, never a silent gap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from dialog.v1 import gateway_pb2, gateway_pb2_grpc
from tests.support.stack import Stack, running_stack

LOG_LEN = 6


@pytest.fixture(scope="module")
def short_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        Path(tmp_path_factory.mktemp("resume")), EVENT_LOG_MAX_LEN=str(LOG_LEN)
    ) as s:
        yield s


def send(stack: Stack, token: str, text: str) -> dict[str, object]:
    with httpx.Client(verify=stack.ssl_context(), timeout=30) as c:
        r = c.post(
            f"{stack.base_url}/messages",
            json={"content": {"type": "text", "text": text}},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def first_events(stack: Stack, token: str, last_event_id: int, count: int) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    event: dict[str, str] = {}
    with (
        httpx.Client(verify=stack.ssl_context(), timeout=30) as c,
        c.stream(
            "GET",
            f"{stack.base_url}/events/stream",
            headers={"Authorization": f"Bearer {token}", "Last-Event-ID": str(last_event_id)},
        ) as r,
    ):
        for line in r.iter_lines():
            if not line and event:
                events.append(event)
                event = {}
                if len(events) == count:
                    break
            elif line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value
    return events


def test_resume_within_the_log_gets_exactly_what_was_missed(short_log: Stack) -> None:
    token = short_log.token()
    send(short_log, token, "one")  # seq 1 (message), 2 (delta), 3 (final)
    send(short_log, token, "two")  # seq 4, 5, 6
    events = first_events(short_log, token, 3, 3)
    assert [e["id"] for e in events] == ["4", "5", "6"]
    assert json.loads(events[0]["data"])["content"]["text"] == "two"


def test_resume_from_before_the_trimmed_point_gets_a_reset(short_log: Stack) -> None:
    token = short_log.token()
    for text in ("a", "b", "c"):  # nine messages; the log keeps six
        send(short_log, token, text)
    [reset] = first_events(short_log, token, 1, 1)
    assert reset["event"] == "reset"
    body = json.loads(reset["data"])
    assert body["content"]["type"] == "reset"
    assert body["content"]["data"]["last_seq"] == 9


async def test_grpc_subscribe_from_before_the_trimmed_point_gets_a_reset(short_log: Stack) -> None:
    token = short_log.token()
    for text in ("a", "b", "c"):
        send(short_log, token, text)
    creds = grpc.ssl_channel_credentials(short_log.ca_file.read_bytes())
    async with grpc.aio.secure_channel(short_log.grpc_target, creds) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Subscribe(
            gateway_pb2.SubscribeRequest(after_seq=1),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        first = await anext(aiter(call))
        call.cancel()
    assert first.message.content.type == "reset"


async def ws_frames(
    stack: Stack, token: str, count: int, query: str = "", *first: str
) -> list[dict]:  # type: ignore[type-arg]
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {token}"}
    url = f"{stack.ws_url}{query}"
    async with connect(url, ssl=stack.ssl_context(), additional_headers=headers) as ws:
        for frame in first:
            await ws.send(frame)
        return [json.loads(await ws.recv()) for _ in range(count)]


async def test_websocket_resume_parameter_gets_exactly_what_was_missed(short_log: Stack) -> None:
    token = short_log.token()
    send(short_log, token, "one")
    send(short_log, token, "two")
    frames = await ws_frames(short_log, token, 3, "?resume=3")
    assert [f["seq"] for f in frames] == ["4", "5", "6"]
    assert frames[0]["content"]["text"] == "two"


async def test_websocket_resume_frame_restarts_the_stream_after_a_seq(short_log: Stack) -> None:
    token = short_log.token()
    send(short_log, token, "one")  # seq 1, 2, 3
    resume = json.dumps({"id": "r", "content": {"type": "resume", "data": {"after_seq": 1}}})
    frames = await ws_frames(short_log, token, 3, "", resume)
    acks = [f for f in frames if f["content"]["type"] == "ack"]
    assert [a["context"]["reply_to"] for a in acks] == ["r"]
    assert [f["seq"] for f in frames if f["content"]["type"] != "ack"] == ["2", "3"]


@pytest.mark.parametrize("data", [{}, {"after_seq": -1}, {"after_seq": 1.5}, {"after_seq": "1"}])
async def test_a_bad_resume_frame_gets_an_error_frame(short_log: Stack, data: object) -> None:
    frame = json.dumps({"id": "r", "content": {"type": "resume", "data": data}})
    [error] = await ws_frames(short_log, short_log.token(), 1, "", frame)
    assert error["content"]["type"] == "error"
    assert error["content"]["data"]["code"] == "invalid_argument"
    assert error["context"]["reply_to"] == "r"


async def test_websocket_resume_from_before_the_trimmed_point_gets_a_reset(
    short_log: Stack,
) -> None:
    token = short_log.token()
    for text in ("a", "b", "c"):
        send(short_log, token, text)
    [reset] = await ws_frames(short_log, token, 1, "?resume=1")
    assert reset["content"]["type"] == "reset"
    assert reset["content"]["data"]["last_seq"] == 9


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 25])
def test_a_bad_websocket_resume_point_is_refused_before_the_upgrade(
    short_log: Stack, value: str
) -> None:
    with httpx.Client(verify=short_log.ssl_context(), timeout=10) as c:
        r = c.get(
            f"{short_log.base_url}/ws",
            params={"resume": value},
            headers={
                "Authorization": f"Bearer {short_log.token()}",
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_argument"
