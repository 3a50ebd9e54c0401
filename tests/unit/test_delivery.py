"""What the inbound queue keeps for a message: it round-trips (with its trace context or
without one, as entries written before it was kept), and a foreign entry is refused."""

from __future__ import annotations

import json

import pytest

from dialog.v1 import message_pb2
from gateway.delivery import QueuedWork, entity_key


def _work(**overrides: object) -> QueuedWork:
    msg = message_pb2.Message(id="m-1", seq=7, role=message_pb2.ROLE_USER)
    msg.content.type = "task.create"
    msg.content.text = "line one\nline two"  # a newline in the body must not split it
    msg.context.entity = "list-1"
    fields: dict[str, object] = {
        "user": "alice smith",
        "client": "cert:laptop",
        "key": "11:alice smith:m-1",
        "entity": entity_key("alice smith", "list-1"),
        "log_seq": 42,
        "message": msg,
    }
    fields.update(overrides)
    return QueuedWork(**fields)  # type: ignore[arg-type]


def test_an_entry_round_trips() -> None:
    work = _work()
    assert QueuedWork.decode(work.encode()) == work


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_an_entry_round_trips_with_its_trace_context() -> None:
    work = _work(traceparent=TRACEPARENT, tracestate="vendor=abc")
    decoded = QueuedWork.decode(work.encode())
    assert decoded == work
    assert decoded.trace_context() == {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}


def test_an_entry_without_trace_context_writes_none_and_reads_none() -> None:
    work = _work()
    assert b"trace" not in work.encode().partition(b"\n")[0]
    assert QueuedWork.decode(work.encode()).trace_context() == {}
    traced = _work(traceparent=TRACEPARENT)
    assert QueuedWork.decode(traced.encode()).trace_context() == {"traceparent": TRACEPARENT}


def test_an_entry_written_before_trace_context_was_kept_still_decodes() -> None:
    work = _work()
    head = json.dumps(
        {
            "user": work.user,
            "client": work.client,
            "key": work.key,
            "entity": work.entity,
            "log_seq": work.log_seq,
        }
    )
    old = head.encode() + b"\n" + work.message.SerializeToString()
    decoded = QueuedWork.decode(old)
    assert decoded == work
    assert (decoded.traceparent, decoded.tracestate) == ("", "")


def test_the_logged_form_carries_the_log_seq_and_leaves_the_message_alone() -> None:
    work = _work()
    logged = work.logged()
    assert (logged.seq, work.message.seq) == (42, 7)
    assert logged.content == work.message.content


@pytest.mark.parametrize(
    "data",
    [b"", b"no header line", b'{"user": "a"}\n', b"[]\n", b"{not json\n", _work().encode()[:-3]],
)
def test_a_foreign_entry_is_refused_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        QueuedWork.decode(data)


def test_entity_keys_are_scoped_per_user_without_collisions() -> None:
    assert entity_key("a:b", "c") != entity_key("a", "b:c")
    assert entity_key("alice", "e") != entity_key("bob", "e")
