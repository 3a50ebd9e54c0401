from __future__ import annotations

from dialog.v1 import message_pb2
from gateway.idempotency import Outcome, dedup_key, fingerprint


def message(text: str, **fields: object) -> message_pb2.Message:
    msg = message_pb2.Message(content=message_pb2.Content(type="text", text=text))
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def test_fingerprint_ignores_server_owned_fields() -> None:
    a = message("hi", id="1", seq=4)
    b = message("hi", id="2", seq=9)
    b.timestamp.FromSeconds(1_700_000_000)
    b.context.reply_to = "x"
    assert fingerprint(a) == fingerprint(b)


def test_fingerprint_tells_bodies_apart() -> None:
    assert fingerprint(message("hi")) != fingerprint(message("hi!"))
    with_service = message("hi")
    with_service.context.service = "tasks"
    assert fingerprint(message("hi")) != fingerprint(with_service)


def test_keys_are_scoped_per_user_without_ambiguity() -> None:
    assert dedup_key("a", "b:c") != dedup_key("a:b", "c")
    assert dedup_key("alice", "m1") == dedup_key("alice", "m1")


def test_outcome_round_trips_and_leaves_deltas_out() -> None:
    stored = message("question", id="q", seq=1)
    delta = message_pb2.Message(content=message_pb2.Content(type="delta", text="part"))
    final = message_pb2.Message(content=message_pb2.Content(type="text", text="answer"))
    outcome = Outcome.of(stored, [delta, final])
    assert outcome.replies == (final,)
    assert Outcome.decode(outcome.encode()) == outcome
