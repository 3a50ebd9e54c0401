"""``protojson.to_dict`` writes exactly what ``json_format.MessageToDict`` writes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dialog.backend.v1 import backend_pb2
from dialog.tasks.v1 import tasks_pb2
from dialog.v1 import message_pb2
from gateway import protojson

TEXT = st.text(max_size=12)
# Value numbers are doubles; NaN and infinities are checked apart (both refuse them).
NUMBER = st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | NUMBER | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


def reference(msg: Message) -> Any:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


@st.composite
def messages(draw: st.DrawFn) -> message_pb2.Message:
    msg = message_pb2.Message(
        id=draw(TEXT),
        # 99: a role this build does not know, written as its number.
        role=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 99])),
        seq=draw(st.integers(0, 2**64 - 1)),
    )
    if draw(st.booleans()):
        msg.content.type = draw(TEXT)
        msg.content.text = draw(TEXT)
        if draw(st.booleans()):
            msg.content.data.update(draw(st.dictionaries(TEXT, JSON_VALUE, max_size=4)))
    if draw(st.booleans()):
        msg.context.conversation_id = draw(TEXT)
        msg.context.reply_to = draw(TEXT)
        for key, value in draw(st.dictionaries(TEXT, TEXT, max_size=3)).items():
            msg.context.labels[key] = value
    if draw(st.booleans()):
        msg.timestamp.seconds = draw(st.integers(-62135596800, 253402300799))
        msg.timestamp.nanos = draw(st.integers(0, 999_999_999))
    return msg


@settings(max_examples=300, deadline=None)
@given(messages())
def test_every_envelope_is_written_as_json_format_writes_it(msg: message_pb2.Message) -> None:
    assert protojson.to_dict(msg) == reference(msg)


@settings(max_examples=100, deadline=None)
@given(st.lists(messages(), max_size=3), st.dictionaries(TEXT, st.integers(0, 10**6), max_size=3))
def test_repeated_fields_and_maps_of_messages_the_fast_path_leaves_to_json_format(
    batch: list[message_pb2.Message], timeouts_ms: dict[str, int]
) -> None:
    request = backend_pb2.ConverseRequest(messages=batch)
    for msg_id, ms in timeouts_ms.items():
        request.timeouts[msg_id].FromMilliseconds(ms)  # Duration: json_format's own
    assert protojson.to_dict(request) == reference(request)


@pytest.mark.parametrize(
    "msg",
    [
        tasks_pb2.Task(id="t1", title="buy milk", done=True, created_at={"seconds": 7}),
        tasks_pb2.WatchResponse(change_type=2, task=tasks_pb2.Task(id="t1")),
        tasks_pb2.ListTasksResponse(tasks=[tasks_pb2.Task(id="a"), tasks_pb2.Task(id="b")]),
        tasks_pb2.UpdateTaskRequest(task=tasks_pb2.Task(id="t1"), update_mask={"paths": ["title"]}),
        struct_pb2.Struct(),
        timestamp_pb2.Timestamp(seconds=1, nanos=5000),
        message_pb2.Message(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_other_message_types(msg: Message) -> None:
    assert protojson.to_dict(msg) == reference(msg)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_number_json_cannot_hold_is_refused_like_json_format_refuses_it(number: float) -> None:
    msg = message_pb2.Message()
    msg.content.data["n"] = number
    with pytest.raises(Exception) as expected:
        reference(msg)
    with pytest.raises(type(expected.value)):
        protojson.to_dict(msg)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-62135596800, 253402300799),
    st.one_of(
        st.integers(0, 999_999_999),
        st.integers(0, 999).map(lambda ms: ms * 1_000_000),
        st.integers(0, 999_999).map(lambda us: us * 1000),
    ),
)
@example(-62135596800, 0)  # 0001-01-01T00:00:00Z
@example(253402300799, 999_999_999)  # 9999-12-31T23:59:59.999999999Z
@example(-1, 1)
@example(0, 1_000_000)
@example(86399, 1000)
def test_timestamps_are_written_as_protobuf_writes_them(seconds: int, nanos: int) -> None:
    ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert protojson.to_dict(ts) == ts.ToJsonString() == reference(ts)
    msg = message_pb2.Message(timestamp=ts)
    assert protojson.to_dict(msg) == reference(msg)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(-62135596801, 0), (253402300800, 0), (0, -1), (0, 1_000_000_000), (-(2**63), 0)],
)
def test_a_timestamp_out_of_range_is_refused_as_protobuf_refuses_it(
    seconds: int, nanos: int
) -> None:
    msg = message_pb2.Message()
    msg.timestamp.seconds = seconds
    msg.timestamp.nanos = nanos
    with pytest.raises(ValueError) as expected:
        msg.timestamp.ToJsonString()
    with pytest.raises(ValueError) as got:
        protojson.to_dict(msg)
    assert str(got.value) == str(expected.value)
