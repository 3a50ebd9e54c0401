"""Broken object-level authorization across users: the attacker (user B) names the victim's
(user A's) objects — event-stream positions, tasks, a WebSocket ticket — and the fields the
gateway owns (``seq``, ``timestamp``, ``context.reply_to``, ``role``). Nothing of A's reaches B,
and nothing B claims on A's behalf is taken.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.security.clients import (
    TIMEOUT_S,
    RawWebSocket,
    bearer,
    grpc_credentials,
    grpc_send,
    post_message,
    recorded,
    text_message,
)
from tests.security.conftest import ORIGIN, Recorder
from tests.support.stack import Stack

VICTIM = "victim-of-bola"
SECRET_TEXT = "victim-secret-text"


@dataclass(frozen=True)
class Victim:
    user: str
    last_seq: int
    task_id: str


@pytest.fixture(scope="module")
def victim(guarded: Stack) -> Victim:
    """User A with three chat messages (six deliveries) and one task."""
    token = guarded.token(VICTIM)
    for i in range(3):
        r = post_message(guarded, text_message(f"{SECRET_TEXT} {i}"), token=token)
        assert r.status_code == 200, r.text
    r = post_message(
        guarded,
        {"content": {"type": "task.create", "text": SECRET_TEXT}, "context": {"service": "tasks"}},
        token=token,
    )
    assert r.status_code == 200, r.text
    task = r.json()["replies"][-1]
    assert task["content"]["type"] == "task"
    return Victim(VICTIM, int(r.json()["message"]["seq"]), task["content"]["data"]["id"])


# --- event streams -----------------------------------------------------------------------


@pytest.mark.parametrize("last_event_id", ["1", "3", "5", "7", "99999"])
async def test_last_event_id_replays_only_the_callers_own_events(
    guarded: Stack, attacker: Recorder, victim: Victim, last_event_id: str
) -> None:
    token = guarded.token(attacker.user)
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": last_event_id}
    ids: list[int] = []
    lines: list[str] = []
    async with (
        httpx.AsyncClient(verify=guarded.ssl_context(), timeout=TIMEOUT_S) as client,
        client.stream("GET", f"{guarded.base_url}/events/stream", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        # The subscription is live once the headers are here: B's own message marks the end.
        r = await asyncio.to_thread(post_message, guarded, text_message("b-marker"), token=token)
        assert r.status_code == 200
        async with asyncio.timeout(TIMEOUT_S):
            async for line in stream.aiter_lines():
                lines.append(line)
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                if line.startswith("data: ") and len(ids) == 2:
                    break
    assert ids == [1, 2]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    # A point beyond the caller's own (empty) log is a reset that tells its own last seq, 0:
    # nothing about the victim's log.
    resets = [d for d in data if d["content"]["type"] == "reset"]
    assert [r["content"]["data"]["last_seq"] for r in resets] == [0]
    assert [d["content"]["text"] for d in data if d not in resets] == ["b-marker", "b-marker"]
    assert SECRET_TEXT not in "\n".join(lines)


@pytest.mark.parametrize("after_seq", [1, 3, 5, 7])
async def test_grpc_subscribe_after_seq_replays_only_the_callers_own_events(
    guarded: Stack, attacker: Recorder, victim: Victim, after_seq: int
) -> None:
    token = guarded.token(attacker.user)
    async with grpc.aio.secure_channel(guarded.grpc_target, grpc_credentials(guarded)) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Subscribe(
            gateway_pb2.SubscribeRequest(after_seq=after_seq), metadata=bearer(token)
        )
        await asyncio.wait_for(call.initial_metadata(), TIMEOUT_S)
        sent = await grpc_send(guarded, bearer(token), _text("b-marker"))
        assert sent.code == grpc.StatusCode.OK
        got: list[message_pb2.Message] = []
        resets: list[message_pb2.Message] = []
        async with asyncio.timeout(TIMEOUT_S):
            async for response in call:
                is_reset = response.message.content.type == "reset"
                (resets if is_reset else got).append(response.message)
                if len(got) == 2:
                    break
        call.cancel()
    # A point beyond the caller's own (empty) log: a reset with its own last seq, 0.
    assert [r.content.data["last_seq"] for r in resets] == [0]
    assert [m.seq for m in got] == [1, 2]
    assert [m.content.text for m in got] == ["b-marker", "b-marker"]


def _text(text: str) -> message_pb2.Message:
    msg = message_pb2.Message()
    msg.content.type = "text"
    msg.content.text = text
    return msg


# --- tasks: another user's task is indistinguishable from one that does not exist ----------

UNKNOWN_TASK_ID = "987654321"


def task_request(kind: str, task_id: str, where: str) -> dict[str, Any]:
    if where == "data.id":
        return {"content": {"type": kind, "data": {"id": task_id}}, "context": {"service": "tasks"}}
    return {"content": {"type": kind}, "context": {"service": "tasks", "entity": task_id}}


def normalized_answer(response: httpx.Response, task_id: str) -> tuple[int, list[Any]]:
    """Status and final replies without per-request fields; the task id made generic."""
    body = response.json()
    replies = []
    for reply in body.get("replies", []):
        reply = {k: v for k, v in reply.items() if k not in ("id", "seq", "timestamp")}
        text = json.dumps(reply, sort_keys=True).replace(body["message"]["id"], "<request>")
        text = text.replace(f'"{task_id}"', '"<id>"').replace(f"task {task_id} ", "task <id> ")
        replies.append(json.loads(text))
    return response.status_code, replies


@pytest.mark.parametrize(
    ("kind", "where"),
    [("task.complete", "data.id"), ("task.complete", "context.entity"), ("task.get", "data.id")],
)
def test_another_users_task_answers_like_an_unknown_one(
    guarded: Stack, attacker: Recorder, victim: Victim, kind: str, where: str
) -> None:
    token = guarded.token(attacker.user)
    theirs = post_message(guarded, task_request(kind, victim.task_id, where), token=token)
    unknown = post_message(guarded, task_request(kind, UNKNOWN_TASK_ID, where), token=token)
    assert theirs.status_code == 200, theirs.text
    assert normalized_answer(theirs, victim.task_id) == normalized_answer(unknown, UNKNOWN_TASK_ID)
    assert theirs.json()["replies"][-1]["content"]["type"] == "error"
    # The victim's task is untouched.
    listing = post_message(
        guarded,
        {"content": {"type": "task.list"}, "context": {"service": "tasks"}},
        token=guarded.token(victim.user),
    )
    tasks = listing.json()["replies"][-1]["content"]["data"]["tasks"]
    assert [(t["id"], t["done"]) for t in tasks] == [(victim.task_id, False)]


def test_task_list_shows_only_the_callers_tasks(
    guarded: Stack, attacker: Recorder, victim: Victim
) -> None:
    r = post_message(
        guarded,
        {"content": {"type": "task.list"}, "context": {"service": "tasks", "entity": VICTIM}},
        token=guarded.token(attacker.user),
    )
    assert r.status_code == 200
    assert r.json()["replies"][-1]["content"]["data"] == {"tasks": []}


# --- WebSocket tickets ----------------------------------------------------------------------


def issue_ticket(stack: Stack, user: str) -> str:
    with httpx.Client(verify=stack.ssl_context(), timeout=TIMEOUT_S) as client:
        r = client.post(
            f"{stack.base_url}/ws-ticket",
            headers={"Authorization": f"Bearer {stack.token(user)}", "Origin": ORIGIN},
        )
    assert r.status_code == 200, r.text
    return str(r.json()["ticket"])


def test_a_stolen_ticket_acts_only_as_its_owner_and_cannot_switch_user(
    guarded: Stack, attacker: Recorder
) -> None:
    owner = f"{attacker.user}-owner"
    ticket = issue_ticket(guarded, owner)
    with RawWebSocket(guarded, {"Origin": ORIGIN}, path=f"/ws?ticket={ticket}") as ws:
        assert ws.accepted
        switch = {"id": "sw", "content": {"type": "auth", "text": guarded.token(attacker.user)}}
        ws.send_text(json.dumps(switch))
        ws.send_text(json.dumps({"id": "after-switch", **text_message("who am i")}))
        frames = [json.loads(t) for t in ws.read_texts(3)]
    assert frames[0]["content"]["data"]["code"] == "permission_denied"
    assert [m["id"] for m in recorded(guarded, owner)] == ["after-switch"]
    assert attacker.messages() == []


def test_a_header_and_someone_elses_ticket_act_as_the_header_user(
    guarded: Stack, attacker: Recorder
) -> None:
    owner = f"{attacker.user}-owner"
    ticket = issue_ticket(guarded, owner)
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}"}
    with RawWebSocket(guarded, headers, path=f"/ws?ticket={ticket}") as ws:
        assert ws.accepted
        ws.send_text(json.dumps({"id": "mixed", **text_message("mine")}))
        frames = [json.loads(t) for t in ws.read_texts(2)]
    assert [f["context"]["reply_to"] for f in frames] == ["mixed", "mixed"]
    assert [m["id"] for m in attacker.messages()] == ["mixed"]
    assert recorded(guarded, owner) == []


# --- fields the gateway owns ---------------------------------------------------------------

FORGED_FIELDS: dict[str, dict[str, Any]] = {
    "seq": {"seq": "999"},
    "timestamp": {"timestamp": "2000-01-01T00:00:00Z"},
    "reply_to": {"context": {"reply_to": "someone-elses-message"}},
    "all three": {
        "seq": "5",
        "timestamp": "2099-01-01T00:00:00Z",
        "context": {"reply_to": "someone-elses-message"},
    },
}


@pytest.mark.parametrize("fields", FORGED_FIELDS.values(), ids=FORGED_FIELDS.keys())
def test_server_owned_fields_are_overwritten(
    guarded: Stack, attacker: Recorder, fields: dict[str, Any]
) -> None:
    r = post_message(
        guarded, text_message("forged fields", **fields), token=guarded.token(attacker.user)
    )
    assert r.status_code == 200, r.text
    stored = r.json()["message"]
    assert stored["seq"] == "1"
    assert "reply_to" not in stored.get("context", {})
    stamped = dt.datetime.fromisoformat(stored["timestamp"].replace("Z", "+00:00"))
    assert abs((stamped - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    assert r.json()["replies"][-1]["context"]["reply_to"] == stored["id"]
    assert [m["id"] for m in attacker.messages()] == [stored["id"]]


@pytest.mark.parametrize(
    "role", ["assistant", "system", "event", "tool", "ROLE_ASSISTANT", "ROLE_SYSTEM"]
)
def test_a_role_other_than_user_is_refused_over_http(
    guarded: Stack, attacker: Recorder, role: str
) -> None:
    r = post_message(
        guarded, text_message("impersonation", role=role), token=guarded.token(attacker.user)
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_argument"
    assert attacker.messages() == []


@pytest.mark.parametrize("role", [message_pb2.ROLE_ASSISTANT, message_pb2.ROLE_SYSTEM])
async def test_a_role_other_than_user_is_refused_over_grpc(
    guarded: Stack, attacker: Recorder, role: int
) -> None:
    msg = _text("impersonation")
    msg.role = role  # type: ignore[assignment]
    result = await grpc_send(guarded, bearer(guarded.token(attacker.user)), msg)
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT
    assert attacker.messages() == []


async def test_server_owned_fields_are_overwritten_over_grpc(
    guarded: Stack, attacker: Recorder
) -> None:
    msg = _text("forged over grpc")
    msg.id = "g-forged"
    msg.seq = 999
    msg.context.reply_to = "someone-elses-message"
    msg.timestamp.FromSeconds(946684800)  # 2000-01-01
    result = await grpc_send(guarded, bearer(guarded.token(attacker.user)), msg)
    assert result.code == grpc.StatusCode.OK
    ack = result.replies[0]
    assert (ack.content.type, ack.seq, ack.context.reply_to) == ("ack", 1, "g-forged")
    assert ack.timestamp.seconds > 946684800
    assert [m["id"] for m in attacker.messages()] == ["g-forged"]


def test_a_role_other_than_user_is_refused_over_websocket(
    guarded: Stack, attacker: Recorder
) -> None:
    headers = {"Authorization": f"Bearer {guarded.token(attacker.user)}"}
    with RawWebSocket(guarded, headers) as ws:
        ws.send_text(json.dumps({"id": "w-role", **text_message("x", role="assistant")}))
        frame = json.loads(ws.read_texts(1)[0])
    assert frame["content"]["data"]["code"] == "invalid_argument"
    assert attacker.messages() == []
