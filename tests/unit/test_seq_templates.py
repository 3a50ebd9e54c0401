"""The seq templates a store fills in (``WorkTemplate``, ``OutcomeTemplate``): filled with a
seq, they are what the callers used to build themselves once the log gave that seq, the
in-flight body (``QueuedWork.encode``) and the outcome for repeats (``Outcome.encode``)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialog.backend.v1 import backend_pb2
from dialog.v1 import message_pb2
from gateway.delivery import QueuedWork, entity_key
from gateway.idempotency import Outcome
from gateway.store.records import OutcomeTemplate, WorkTemplate, varint

SEQS = [*range(128), 128, 129, 255, 256, 16383, 16384, 2**21 - 1, 2**21, 2**40, 2**53]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _work(**overrides: object) -> QueuedWork:
    msg = message_pb2.Message(id="m-1", seq=7, role=message_pb2.ROLE_USER)
    msg.content.type = "task.create"
    msg.content.text = 'line one\nline two "quoted" é'
    msg.context.entity = "list-1"
    fields: dict[str, object] = {
        "user": "alice smith",
        "client": "cert:laptop",
        "key": "11:alice smith:m-1",
        "entity": entity_key("alice smith", "list-1"),
        "log_seq": 0,
        "message": msg,
    }
    fields.update(overrides)
    return QueuedWork(**fields)  # type: ignore[arg-type]


def _reply(text: str, kind: str = "text", seq: int = 0) -> message_pb2.Message:
    out = message_pb2.Message(id=f"r-{text}", role=message_pb2.ROLE_ASSISTANT, seq=seq)
    out.content.type = kind
    out.content.text = text
    out.context.reply_to = "m-1"
    out.context.conversation_id = "c-1"
    out.timestamp.seconds = 1_700_000_123
    return out


def test_varint_is_protobufs() -> None:
    assert [varint(n) for n in (0, 1, 127, 128, 300, 16384)] == [
        b"\x00",
        b"\x01",
        b"\x7f",
        b"\x80\x01",
        b"\xac\x02",
        b"\x80\x80\x01",
    ]
    for n in SEQS:
        # uint64 field 6 of a Message is the tag 0x30 and the varint.
        assert message_pb2.Message.FromString(b"\x30" + varint(n)).seq == n


def test_a_work_template_splices_the_seq_in_decimal() -> None:
    assert WorkTemplate(b"a", b"z").fill(0) == b"a0z"
    assert WorkTemplate(b"a", b"z").fill(2**40) == b"a1099511627776z"


@pytest.mark.parametrize("trace", [{}, {"traceparent": TRACEPARENT, "tracestate": "v=abc"}])
@pytest.mark.parametrize("seq", SEQS)
def test_a_filled_work_template_is_the_work_with_its_log_seq(
    seq: int, trace: dict[str, str]
) -> None:
    work = _work(**trace)
    filled = work.template().fill(seq)
    expected = dataclasses.replace(work, log_seq=seq)
    assert filled == expected.encode()
    assert QueuedWork.decode(filled) == expected
    head = json.loads(filled.partition(b"\n")[0])
    assert list(head)[-1] == "log_seq"  # last: a plain decimal splice


def test_a_body_with_log_seq_amid_its_header_still_decodes() -> None:
    # As entries were written before the templates: log_seq before the trace context.
    work = _work(log_seq=42, traceparent=TRACEPARENT)
    header = {
        "user": work.user,
        "client": work.client,
        "key": work.key,
        "entity": work.entity,
        "log_seq": 42,
        "traceparent": TRACEPARENT,
    }
    old = json.dumps(header).encode() + b"\n" + work.message.SerializeToString()
    assert QueuedWork.decode(old) == work


def _outcome_case(seq: int) -> tuple[bytes, Outcome]:
    stored = _work(log_seq=3).logged()
    earlier = [_reply("part", kind="delta", seq=4), _reply("note", seq=5)]
    final = _reply("done")
    filled = Outcome.template(stored, earlier, final).fill(seq)
    final.seq = seq
    return filled, Outcome.of(stored, [*earlier, final])


@pytest.mark.parametrize("seq", SEQS)
def test_a_filled_outcome_template_is_the_outcome_with_the_final_seq(seq: int) -> None:
    filled, expected = _outcome_case(seq)
    assert Outcome.decode(filled) == expected
    parsed = backend_pb2.ConverseResponse.FromString(filled)
    assert parsed == backend_pb2.ConverseResponse.FromString(expected.encode())
    assert parsed.messages[-1].seq == seq


@given(st.integers(min_value=0, max_value=2**53))
def test_any_seq_fills_an_outcome_that_decodes(seq: int) -> None:
    filled, expected = _outcome_case(seq)
    assert Outcome.decode(filled) == expected


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2**53))
def test_an_outcome_template_appends_one_length_delimited_entry(final: bytes, seq: int) -> None:
    prefix = b"\x0a\x00"
    filled = OutcomeTemplate(prefix, final).fill(seq)
    entry = final + b"\x30" + varint(seq)
    assert filled == prefix + b"\x0a" + varint(len(entry)) + entry


def test_an_outcome_template_is_refused_a_final_reply_with_a_seq_or_a_delta() -> None:
    stored = _work().logged()
    with pytest.raises(ValueError):
        Outcome.template(stored, [], _reply("done", seq=9))
    with pytest.raises(ValueError):
        Outcome.template(stored, [], _reply("part", kind="delta"))
