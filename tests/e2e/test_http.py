"""POST /messages, /events/stream, /health and /metrics against real processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import Stack

BODY = {"role": "user", "content": {"type": "text", "text": "Ping"}}


def client(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, verify=stack.ssl_context(), timeout=30)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse server-sent events from a line iterator (comments are skipped)."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = event[name] + "\n" + value if name in event else value


def test_post_message_returns_stored_message_and_final_reply(stack: Stack) -> None:
    with client(stack) as c:
        r = c.post("/messages", json=BODY, headers=auth(stack.token()))
    assert r.status_code == 200, r.text
    body = r.json()
    stored = body["message"]
    assert stored["id"] and stored["timestamp"] and int(stored["seq"]) >= 1
    assert stored["role"] == "user" and stored["content"] == BODY["content"]
    final = body["replies"][-1]
    assert final["content"] == {"type": "text", "text": "Ping"}
    assert final["role"] == "assistant"
    assert final["context"]["reply_to"] == stored["id"]
    assert int(final["seq"]) > int(stored["seq"])


def streams_opened(c: httpx.Client) -> float:
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "dialog_backend_streams_opened_total" and sample.labels == {
                "backend": "chat"
            }:
                return float(sample.value)
    return 0.0


def test_requests_of_one_user_share_one_backend_stream(stack: Stack) -> None:
    with client(stack) as c:
        before = streams_opened(c)
        token = stack.token("stream-sharer")
        for text in ("one", "two", "three"):
            r = c.post("/messages", json={**BODY, "content": {"type": "text", "text": text}},
                       headers=auth(token))  # fmt: skip
            assert r.json()["replies"][-1]["content"]["text"] == text
        sse = {**auth(token), "Accept": "text/event-stream"}
        with c.stream("POST", "/messages", json=BODY, headers=sse) as r:
            assert any(e.get("event") == "message" for e in sse_events(r.iter_lines()))
        assert streams_opened(c) == before + 1
        r = c.post("/messages", json=BODY, headers=auth(stack.token("someone-else")))
        assert r.status_code == 200
        assert streams_opened(c) == before + 2


def test_post_message_streams_replies_as_sse(stack: Stack) -> None:
    payload = {"role": "user", "content": {"type": "text", "text": "one two three"}}
    headers = {**auth(stack.token()), "Accept": "text/event-stream"}
    with client(stack) as c, c.stream("POST", "/messages", json=payload, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    assert events[0]["event"] == "ack"
    ack = json.loads(events[0]["data"])
    assert ack["content"]["type"] == "ack"
    messages = [json.loads(e["data"]) for e in events[1:]]
    deltas = [m["content"]["text"] for m in messages if m["content"]["type"] == "delta"]
    assert "".join(deltas).split() == ["one", "two", "three"]
    assert messages[-1]["content"] == {"type": "text", "text": "one two three"}
    assert all(m["context"]["reply_to"] == ack["id"] for m in messages)
    seqs = [int(e["id"]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_tasks_route_creates_task_and_emits_event(stack: Stack) -> None:
    payload = {
        "role": "user",
        "content": {"type": "task.create", "text": "buy milk"},
        "context": {"service": "tasks"},
    }
    with client(stack) as c:
        r = c.post("/messages", json=payload, headers=auth(stack.token()))
    assert r.status_code == 200, r.text
    replies = r.json()["replies"]
    kinds = [(m["role"], m["content"]["type"]) for m in replies]
    assert ("event", "task.created") in kinds
    assert kinds[-1] == ("assistant", "task")
    assert replies[-1]["content"]["data"]["title"] == "buy milk"


def test_event_stream_carries_every_delivered_message(stack: Stack) -> None:
    token = stack.token()
    received: list[dict[str, str]] = []
    opened = threading.Event()

    def listen() -> None:
        with client(stack) as c, c.stream("GET", "/events/stream", headers=auth(token)) as r:
            assert r.status_code == 200
            opened.set()
            for event in sse_events(r.iter_lines()):
                received.append(event)
                data = json.loads(event["data"])
                if data["role"] == "assistant" and data["content"]["type"] == "text":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(10)
    with client(stack) as c:
        r = c.post("/messages", json=BODY, headers=auth(token))
    assert r.status_code == 200
    listener.join(10)
    assert not listener.is_alive()
    ids = [int(e["id"]) for e in received]
    assert ids == sorted(ids)
    first = json.loads(received[0]["data"])
    assert first["role"] == "user" and first["id"] == r.json()["message"]["id"]


def test_events_of_one_user_never_reach_another(stack: Stack) -> None:
    alice, mallory = stack.token("alice-iso"), stack.token("mallory-iso")
    with client(stack) as c:
        c.post("/messages", json=BODY, headers=auth(alice))
        with c.stream(
            "GET", "/events/stream", headers={**auth(mallory), "Last-Event-ID": "0"}
        ) as r:
            assert r.status_code == 200
            c.post("/messages", json=BODY, headers=auth(alice))
            # Mallory's own message must be the first event she sees.
            c.post("/messages", json=BODY, headers=auth(mallory))
            first = next(sse_events(r.iter_lines()))
    assert json.loads(first["data"])["role"] == "user"
    assert first["id"] == "1"


def test_health_reports_every_backend(stack: Stack) -> None:
    with client(stack) as c:
        r = c.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "SERVING"
    for name in ("chat", "tasks"):
        b = body["backends"][name]
        assert b["status"] == "SERVING"
        assert b["last_success_at"] and b["checks_total"] >= 1
        assert b["consecutive_failures"] == 0


def test_metrics_are_public_and_named(stack: Stack) -> None:
    with client(stack) as c:
        c.post("/messages", json=BODY, headers=auth(stack.token()))
        r = c.get("/metrics")
    assert r.status_code == 200
    text = r.text
    for name in (
        "dialog_gateway_request_duration_seconds_bucket",
        "dialog_gateway_backend_call_duration_seconds_bucket",
        "dialog_gateway_time_to_first_reply_seconds_bucket",
        "dialog_gateway_websocket_connections",
        "dialog_gateway_messages_total",
        "dialog_gateway_backend_up",
    ):
        assert name in text
    assert 'surface="http"' in text


@pytest.mark.parametrize("path", ["/messages", "/events/stream"])
def test_private_paths_need_a_token(stack: Stack, path: str) -> None:
    with client(stack) as c:
        r = c.request("POST" if path == "/messages" else "GET", path, json=BODY)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
