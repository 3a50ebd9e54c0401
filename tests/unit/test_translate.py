"""JSON <-> protobuf translation of the Message envelope (gateway.translate), no event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from dialog.v1 import message_pb2
from gateway.errors import (
    BackendTimeout,
    DialogError,
    InvalidMessage,
    MessageTooLarge,
    RateLimited,
)
from gateway.translate import (
    MAX_ID_CHARS,
    Message,
    accept_client_message,
    is_final,
    make_ack,
    make_error,
    message_from_dict,
    message_to_dict,
    message_to_json,
    parse_message,
)

MAX_BYTES = 1 << 20
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def _msg(**fields: Any) -> Message:
    """A Message built from its JSON form (through json_format, not the code under test)."""
    return json_format.ParseDict(fields, Message())


# ---------------------------------------------------------------------------
# parse_message: accepted inputs
# ---------------------------------------------------------------------------

# (name, raw JSON, expected Message in proto JSON form)
ACCEPT_CASES = [
    (
        "the documented example",
        '{"role":"user","content":{"type":"text","text":"Ping"}}',
        {"role": "ROLE_USER", "content": {"type": "text", "text": "Ping"}},
    ),
    (
        "role in proto form",
        '{"role":"ROLE_USER","content":{"type":"text"}}',
        {"role": "ROLE_USER", "content": {"type": "text"}},
    ),
    (
        "role assistant in short form",
        '{"role":"assistant","content":{"type":"text"}}',
        {"role": "ROLE_ASSISTANT", "content": {"type": "text"}},
    ),
    (
        "no role",
        '{"content":{"type":"text"}}',
        {"content": {"type": "text"}},
    ),
    (
        "lowerCamel field names",
        '{"content":{"type":"text"},"context":{"conversationId":"c1","replyTo":"m0"}}',
        {"content": {"type": "text"}, "context": {"conversation_id": "c1", "reply_to": "m0"}},
    ),
    (
        "snake_case field names",
        '{"content":{"type":"text"},"context":{"conversation_id":"c1","reply_to":"m0"}}',
        {"content": {"type": "text"}, "context": {"conversation_id": "c1", "reply_to": "m0"}},
    ),
    (
        "every field",
        json.dumps(
            {
                "id": "m1",
                "role": "user",
                "content": {"type": "task.create", "text": "buy milk", "data": {"due": "today"}},
                "context": {
                    "conversation_id": "c1",
                    "entity": "task-7",
                    "service": "tasks",
                    "labels": {"lang": "en"},
                },
                "timestamp": "2024-05-01T12:00:00Z",
                "seq": "7",
            }
        ),
        {
            "id": "m1",
            "role": "ROLE_USER",
            "content": {"type": "task.create", "text": "buy milk", "data": {"due": "today"}},
            "context": {
                "conversation_id": "c1",
                "entity": "task-7",
                "service": "tasks",
                "labels": {"lang": "en"},
            },
            "timestamp": "2024-05-01T12:00:00Z",
            "seq": "7",
        },
    ),
    (
        "id of exactly the maximum length",
        json.dumps({"id": "a" * MAX_ID_CHARS, "content": {"type": "text"}}),
        {"id": "a" * MAX_ID_CHARS, "content": {"type": "text"}},
    ),
    (
        "bytes input",
        b'{"content":{"type":"text","text":"caf\xc3\xa9"}}',
        {"content": {"type": "text", "text": "caf\u00e9"}},
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in ACCEPT_CASES], ids=[c[0] for c in ACCEPT_CASES]
)
def test_parse_message_accepts(raw: str | bytes, expected: dict[str, Any]) -> None:
    assert parse_message(raw, MAX_BYTES) == _msg(**expected)


def test_parse_message_example_fields() -> None:
    msg = parse_message('{"role":"user","content":{"type":"text","text":"Ping"}}', MAX_BYTES)
    assert msg.role == message_pb2.ROLE_USER
    assert msg.content.type == "text"
    assert msg.content.text == "Ping"
    assert msg.id == ""
    assert msg.seq == 0


# ---------------------------------------------------------------------------
# parse_message: refused inputs
# ---------------------------------------------------------------------------

# (name, raw JSON, a fragment the error message must contain)
REJECT_CASES = [
    ("malformed JSON", '{"role":', "malformed JSON"),
    ("empty text", "", "malformed JSON"),
    ("not UTF-8", b'{"content":{"type":"t\xff"}}', "malformed JSON"),
    ("array", '[{"content":{"type":"text"}}]', "JSON object"),
    ("string", '"hello"', "JSON object"),
    ("number", "42", "JSON object"),
    ("null", "null", "JSON object"),
    ("unknown top-level field", '{"content":{"type":"text"},"bogus":1}', "bogus"),
    ("unknown field in content", '{"content":{"type":"text","bogus":1}}', "bogus"),
    ("unknown field in context", '{"content":{"type":"text"},"context":{"bogus":1}}', "bogus"),
    ("content is a string", '{"content":"hi"}', "content"),
    ("content.type is a number", '{"content":{"type":5}}', "type"),
    ("id is a number", '{"id":5,"content":{"type":"text"}}', "id"),
    ("seq is not a number", '{"seq":"abc","content":{"type":"text"}}', "seq"),
    ("seq is negative", '{"seq":-1,"content":{"type":"text"}}', "seq"),
    ("seq is fractional", '{"seq":1.5,"content":{"type":"text"}}', "seq"),
    ("labels value is a number", '{"content":{"type":"t"},"context":{"labels":{"a":1}}}', "labels"),
    ("data is an array", '{"content":{"type":"text","data":[1]}}', "data"),
    ("bad timestamp", '{"content":{"type":"text"},"timestamp":"yesterday"}', "timestamp"),
    ("missing content", '{"role":"user"}', "'content' is required"),
    ("null content", '{"content":null}', "'content' is required"),
    ("missing content.type", '{"content":{"text":"hi"}}', "'content.type' is required"),
    ("empty content.type", '{"content":{"type":""}}', "'content.type' is required"),
    (
        "over-long id",
        json.dumps({"id": "a" * (MAX_ID_CHARS + 1), "content": {"type": "text"}}),
        "longer than",
    ),
    ("unknown role", '{"role":"wizard","content":{"type":"text"}}', "role"),
    ("unknown role, proto form", '{"role":"ROLE_WIZARD","content":{"type":"text"}}', "role"),
    ("empty role", '{"role":"","content":{"type":"text"}}', "role"),
    ("role is a list", '{"role":["user"],"content":{"type":"text"}}', "role"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"), [c[1:] for c in REJECT_CASES], ids=[c[0] for c in REJECT_CASES]
)
def test_parse_message_rejects(raw: str | bytes, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(raw, MAX_BYTES)
    assert fragment in info.value.message
    # The client sees this text: it must be one line.
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("raw", "max_bytes", "too_large"),
    [
        ('{"content":{"type":"text"}}', 27, False),  # exactly at the limit
        ('{"content":{"type":"text"}}', 26, True),
        ('{"content":{"type":"\u00e9"}}', 25, False),  # é is two bytes in UTF-8
        ('{"content":{"type":"\u00e9"}}', 24, True),
        (b'{"content":{"type":"text"}}', 26, True),
        ("not even JSON, but too large", 5, True),  # the size is checked before parsing
    ],
)
def test_parse_message_size_limit(raw: str | bytes, max_bytes: int, too_large: bool) -> None:
    if too_large:
        with pytest.raises(MessageTooLarge):
            parse_message(raw, max_bytes)
    else:
        assert parse_message(raw, max_bytes).content.type


def test_message_from_dict_does_not_mutate_its_input() -> None:
    data = {"role": "user", "content": {"type": "text"}}
    message_from_dict(data)
    assert data == {"role": "user", "content": {"type": "text"}}


# ---------------------------------------------------------------------------
# message_to_dict / message_to_json
# ---------------------------------------------------------------------------

# (name, Message in proto JSON form, expected output dict)
TO_DICT_CASES = [
    (
        "role rendered lower-case, short form",
        {"role": "ROLE_ASSISTANT", "content": {"type": "text", "text": "Pong"}},
        {"role": "assistant", "content": {"type": "text", "text": "Pong"}},
    ),
    (
        "event role",
        {"role": "ROLE_EVENT", "content": {"type": "task.created"}},
        {"role": "event", "content": {"type": "task.created"}},
    ),
    (
        "unspecified role is omitted",
        {"content": {"type": "text"}},
        {"content": {"type": "text"}},
    ),
    (
        "proto field names, seq as a string (uint64), timestamp in RFC 3339",
        {
            "id": "m1",
            "role": "ROLE_USER",
            "content": {"type": "text"},
            "context": {"conversation_id": "c1", "reply_to": "m0"},
            "timestamp": "2024-05-01T12:00:00Z",
            "seq": "3",
        },
        {
            "id": "m1",
            "role": "user",
            "content": {"type": "text"},
            "context": {"conversation_id": "c1", "reply_to": "m0"},
            "timestamp": "2024-05-01T12:00:00Z",
            "seq": "3",
        },
    ),
]


@pytest.mark.parametrize(
    ("fields", "expected"), [c[1:] for c in TO_DICT_CASES], ids=[c[0] for c in TO_DICT_CASES]
)
def test_message_to_dict(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assert message_to_dict(_msg(**fields)) == expected


def test_message_to_json_is_compact_and_keeps_unicode() -> None:
    msg = _msg(role="ROLE_USER", content={"type": "text", "text": "caf\u00e9"})
    text = message_to_json(msg)
    assert text == '{"role":"user","content":{"type":"text","text":"caf\u00e9"}}'
    assert parse_message(text, MAX_BYTES) == msg


# ---------------------------------------------------------------------------
# Round trip (property)
# ---------------------------------------------------------------------------

_short_text = st.text(max_size=40)
_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    _short_text,
)
_json_value = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_short_text, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    msg = Message(
        id=draw(st.text(max_size=MAX_ID_CHARS)),
        role=draw(st.sampled_from(message_pb2.Role.values())),
        seq=draw(st.integers(min_value=0, max_value=2**64 - 1)),
    )
    msg.content.type = draw(st.text(min_size=1, max_size=20))
    msg.content.text = draw(_short_text)
    data = draw(st.dictionaries(_short_text, _json_value, max_size=4))
    if data or draw(st.booleans()):
        msg.content.data.update(data)
    msg.context.conversation_id = draw(_short_text)
    msg.context.entity = draw(_short_text)
    msg.context.service = draw(_short_text)
    msg.context.reply_to = draw(_short_text)
    msg.context.labels.update(draw(st.dictionaries(_short_text, _short_text, max_size=4)))
    if draw(st.booleans()):
        msg.timestamp.FromNanoseconds(
            draw(st.integers(min_value=0, max_value=253_402_300_799 * 10**9))
        )
    return msg


@settings(max_examples=200, deadline=None)
@given(messages())
def test_round_trip_through_dict(msg: Message) -> None:
    assert message_from_dict(message_to_dict(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(messages())
def test_round_trip_through_json_text(msg: Message) -> None:
    text = message_to_json(msg)
    assert parse_message(text, len(text.encode())) == msg


@settings(max_examples=100, deadline=None)
@given(messages())
def test_rendered_role_is_lower_case_short_form(msg: Message) -> None:
    data = message_to_dict(msg)
    if msg.role == message_pb2.ROLE_UNSPECIFIED:
        assert "role" not in data
    else:
        assert data["role"] == message_pb2.Role.Name(msg.role).removeprefix("ROLE_").lower()


# ---------------------------------------------------------------------------
# accept_client_message
# ---------------------------------------------------------------------------


def _ids(*values: str) -> Any:
    it = iter(values)
    return lambda: next(it)


# (name, client message, expected id)
ACCEPT_ID_CASES = [
    ("id assigned when missing", {"content": {"type": "text"}}, "gen-1"),
    ("client id kept", {"id": "client-7", "content": {"type": "text"}}, "client-7"),
]


@pytest.mark.parametrize(
    ("fields", "expected_id"),
    [c[1:] for c in ACCEPT_ID_CASES],
    ids=[c[0] for c in ACCEPT_ID_CASES],
)
def test_accept_client_message_id(fields: dict[str, Any], expected_id: str) -> None:
    calls: list[str] = []

    def new_id() -> str:
        calls.append("gen-1")
        return "gen-1"

    out = accept_client_message(_msg(**fields), now_s=T0, new_id=new_id)
    assert out.id == expected_id
    assert calls == ([] if fields.get("id") else ["gen-1"])


@pytest.mark.parametrize("role", ["ROLE_UNSPECIFIED", "ROLE_USER"])
def test_accept_client_message_sets_server_fields(role: str) -> None:
    msg = _msg(
        id="m1",
        role=role,
        content={"type": "text", "text": "hi"},
        context={"conversation_id": "c1", "service": "chat", "reply_to": "forged"},
        timestamp="2001-01-01T00:00:00Z",
        seq="99",
    )
    out = accept_client_message(msg, now_s=T0 + 0.25, new_id=_ids())
    assert out.role == message_pb2.ROLE_USER
    assert out.seq == 0
    assert out.context.reply_to == ""
    assert out.timestamp.ToNanoseconds() == int((T0 + 0.25) * 1e9)
    # Client-owned fields are kept.
    assert out.content.text == "hi"
    assert out.context.conversation_id == "c1"
    assert out.context.service == "chat"
    # The input is not modified.
    assert msg.seq == 99
    assert msg.context.reply_to == "forged"


@pytest.mark.parametrize("role", ["ROLE_ASSISTANT", "ROLE_SYSTEM", "ROLE_TOOL", "ROLE_EVENT"])
def test_accept_client_message_refuses_other_roles(role: str) -> None:
    msg = _msg(role=role, content={"type": "text"})
    with pytest.raises(InvalidMessage, match="role"):
        accept_client_message(msg, now_s=T0, new_id=_ids("x"))


# ---------------------------------------------------------------------------
# make_ack, make_error, is_final
# ---------------------------------------------------------------------------


def test_make_ack() -> None:
    msg = _msg(
        id="m1",
        role="ROLE_USER",
        content={"type": "text", "text": "secret body"},
        context={"conversation_id": "c1", "service": "chat"},
        timestamp="2024-05-01T12:00:00Z",
        seq="5",
    )
    ack = make_ack(msg)
    assert message_to_dict(ack) == {
        "id": "m1",
        "role": "system",
        "content": {"type": "ack"},
        "context": {"conversation_id": "c1", "reply_to": "m1"},
        "timestamp": "2024-05-01T12:00:00Z",
        "seq": "5",
    }


# (name, error, reply_to)
ERROR_CASES = [
    ("invalid message, no reply_to", InvalidMessage("'content' is required"), ""),
    ("rate limited, with reply_to", RateLimited("slow down", retry_after_s=2.0), "m1"),
    ("timeout", BackendTimeout("the back-end did not answer in time"), "m2"),
]


@pytest.mark.parametrize(
    ("err", "reply_to"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_make_error(err: DialogError, reply_to: str) -> None:
    out = make_error(err, reply_to)
    data = message_to_dict(out)
    assert data["role"] == "system"
    assert data["content"]["type"] == "error"
    assert data["content"]["text"] == err.message
    assert data["content"]["data"] == {"code": err.code, "message": err.message}
    assert out.context.reply_to == reply_to
    assert is_final(out)


def test_make_error_default_reply_to_is_empty() -> None:
    assert make_error(InvalidMessage("x")).context.reply_to == ""


# (name, Message in proto JSON form, final?)
FINAL_CASES = [
    ("delta", {"role": "ROLE_ASSISTANT", "content": {"type": "delta", "text": "Po"}}, False),
    ("event", {"role": "ROLE_EVENT", "content": {"type": "task.created"}}, False),
    ("event with type text", {"role": "ROLE_EVENT", "content": {"type": "text"}}, False),
    ("text", {"role": "ROLE_ASSISTANT", "content": {"type": "text", "text": "Pong"}}, True),
    ("error", {"role": "ROLE_SYSTEM", "content": {"type": "error"}}, True),
    ("other type", {"role": "ROLE_ASSISTANT", "content": {"type": "task.created"}}, True),
]


@pytest.mark.parametrize(
    ("fields", "final"), [c[1:] for c in FINAL_CASES], ids=[c[0] for c in FINAL_CASES]
)
def test_is_final(fields: dict[str, Any], final: bool) -> None:
    assert is_final(_msg(**fields)) is final


@pytest.mark.parametrize(
    "raw",
    [
        '{"role":true,"content":{"type":"t"}}',
        '{"role":5,"content":{"type":"t"}}',
        '{"content":{"type":"t","data":{"x":NaN}}}',
        '{"content":{"type":"t","data":{"x":Infinity}}}',
    ],
)
def test_non_string_roles_and_non_json_constants_are_refused(raw: str) -> None:
    with pytest.raises(InvalidMessage):
        parse_message(raw, 1000)


def test_an_unknown_role_number_from_a_newer_backend_renders_as_a_number() -> None:
    msg = message_pb2.Message(role=99)
    msg.content.type = "text"
    assert message_to_dict(msg)["role"] == 99
