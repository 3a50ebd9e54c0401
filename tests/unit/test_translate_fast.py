"""The fast paths of ``gateway.translate`` give exactly what the general paths give.

``message_from_dict`` builds the common message shape directly and leaves everything
else to ``json_format`` (``_parse_slow``); ``decode_json`` reuses one decoder and skips
the depth walk when the text has too few brackets to nest too deep; ``message_to_json``
reuses one encoder. Each is compared here with the general path, on the common shape
and on its near misses, for the result and for the error text.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dialog.v1 import message_pb2
from gateway import translate
from gateway.errors import InvalidMessage, MessageTooLarge
from gateway.translate import (
    MAX_ID_CHARS,
    Message,
    _parse_fast,
    _parse_slow,
    decode_json,
    json_depth,
    message_from_dict,
    message_to_dict,
    message_to_json,
    validate_client_message,
)

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TYPICAL_FRAME = (
    '{"id":"m-1","role":"user","content":{"type":"text","text":"hello world"},'
    '"context":{"conversation_id":"c1"}}'
)


class StrSub(str):
    """A ``str`` that is not exactly a ``str``: not the fast path's business."""


class DictSub(dict[Any, Any]):
    """A ``dict`` that is not exactly a ``dict``."""


# ---------------------------------------------------------------------------
# Outcomes: a result or an error, compared in full
# ---------------------------------------------------------------------------


def _reference(data: Any) -> Message:
    """``message_from_dict`` through ``json_format`` only."""
    if not isinstance(data, dict):
        raise InvalidMessage("a message must be a JSON object")
    msg = _parse_slow(data)
    validate_client_message(msg)
    return msg


def _outcome(parse: Callable[[Any], Message], data: Any) -> Any:
    try:
        msg = parse(data)
    except Exception as exc:
        return ("error", type(exc), getattr(exc, "message", str(exc)))
    # Equal messages serialize alike; an empty submessage that is present is written
    # (as an empty field), so presence is compared too.
    return (
        "message",
        msg.SerializeToString(deterministic=True),
        [field.name for field, _ in msg.ListFields()],
        msg.HasField("content"),
        msg.HasField("context"),
        msg,
    )


def _check_same(data: Any) -> Any:
    before = copy.deepcopy(data)
    got = _outcome(message_from_dict, data)
    assert got == _outcome(_reference, data)
    assert data == before  # neither path changes its input
    return got


# ---------------------------------------------------------------------------
# Strategies: the common shape and its near misses
# ---------------------------------------------------------------------------

TEXT = st.text(max_size=12)
ROLE_NAMES = [
    "user",
    "assistant",
    "system",
    "tool",
    "event",
    "unspecified",
    "USER",
    "Assistant",
    "ROLE_USER",
    "role_tool",
    "Role_Event",
    "ROLE_UNSPECIFIED",
    "u\u017fer",  # the long s upper-cases to "S": _role_in makes it ROLE_USER
]
BAD_ROLES = ["", "wizard", "ROLE_WIZARD", "1", "0", "ROLE_", "user ", " user", "ROLE_ROLE_USER"]
SURROGATES = ["\ud800", "a\udfffb", "\ud83d\ude00"]
LABELS = st.dictionaries(TEXT, TEXT, max_size=3)
CONTENT_FIELDS = {"type": TEXT, "text": TEXT}
CONTEXT_FIELDS = {
    "conversation_id": TEXT,
    "entity": TEXT,
    "service": TEXT,
    "reply_to": TEXT,
    "labels": LABELS,
}


@st.composite
def fast_shapes(draw: st.DrawFn) -> dict[str, Any]:
    """Messages in the shape ``_parse_fast`` builds itself (valid or not as messages)."""
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["id"] = draw(st.text(max_size=MAX_ID_CHARS + 2) | st.just("a" * (MAX_ID_CHARS + 1)))
    if draw(st.booleans()):
        data["role"] = draw(st.sampled_from(ROLE_NAMES))
    if draw(st.integers(0, 4)):
        data["content"] = draw(st.fixed_dictionaries({}, optional=CONTENT_FIELDS))
    if draw(st.booleans()):
        data["context"] = draw(st.fixed_dictionaries({}, optional=CONTEXT_FIELDS))
    keys = draw(st.permutations(list(data)))
    return {key: data[key] for key in keys}


_any_value: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    TEXT,
    st.sampled_from(SURROGATES),
    TEXT.map(StrSub),
    st.sampled_from(ROLE_NAMES + BAD_ROLES),
    st.sampled_from(["2024-05-01T12:00:00Z", "yesterday", "7", "-1"]),
    st.lists(TEXT | st.integers() | st.none(), max_size=2),
    st.dictionaries(TEXT, TEXT | st.integers() | st.none(), max_size=2),
    st.fixed_dictionaries({}, optional=CONTENT_FIELDS),
    st.fixed_dictionaries({}, optional=CONTEXT_FIELDS),
    LABELS.map(DictSub),
)
TOP_NAMES = ["id", "role", "content", "context", "timestamp", "seq", "Id", "bogus", "[x.y]"]
CONTENT_NAMES = ["type", "text", "data", "Type", "bogus"]
CONTEXT_NAMES = [
    "conversation_id",
    "conversationId",
    "entity",
    "service",
    "reply_to",
    "replyTo",
    "labels",
    "bogus",
]


@st.composite
def near_misses(draw: st.DrawFn) -> Any:
    """The common shape with one to three things changed: most go to ``_parse_slow``."""
    data: Any = draw(fast_shapes())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "content", "context", "labels", "whole"]))
        value = draw(_any_value)
        if where == "whole":
            data = draw(st.sampled_from([DictSub(data), [data], None, "text", 1]))
            break
        if where == "top":
            data[draw(st.sampled_from(TOP_NAMES))] = value
            continue
        parent = data.get(where if where != "labels" else "context")
        if type(parent) is not dict:
            data[where if where != "labels" else "context"] = parent = {}
        if where == "labels":
            labels = parent.get("labels")
            if type(labels) is not dict:
                parent["labels"] = labels = {}
            labels[draw(TEXT | st.sampled_from(SURROGATES))] = value
        else:
            names = CONTENT_NAMES if where == "content" else CONTEXT_NAMES
            parent[draw(st.sampled_from(names))] = value
    return data


# ---------------------------------------------------------------------------
# message_from_dict
# ---------------------------------------------------------------------------


@PROPERTY
@given(fast_shapes())
def test_the_common_shape_is_built_directly_and_as_json_format_builds_it(
    data: dict[str, Any],
) -> None:
    _check_same(data)
    fast = _parse_fast(data)
    assert fast is not None
    assert fast == _parse_slow(data)


@PROPERTY
@given(near_misses())
@example({"content": {}})  # present, empty: refused for its type, not for its absence
@example({"content": {"type": "t"}, "context": {}})
@example({"content": {"type": "t"}, "context": {"labels": {}}})
@example({"content": {"type": "t"}, "context": {"labels": {"a": 1}}})
@example({"content": {"type": "t"}, "context": {"labels": {"a": None}}})
@example({"content": {"type": "t"}, "context": {"labels": "a"}})
@example({"content": {"type": "t"}, "context": {"conversationId": "c"}})
@example({"content": {"type": "t"}, "context": {"conversationId": "c", "conversation_id": "d"}})
@example({"content": {"type": "t"}, "id": None})
@example({"content": None})
@example({"content": {"type": True}})
@example({"content": {"type": "t", "data": {}}})
@example({"content": {"type": "t"}, "seq": 1})
@example({"content": {"type": "t"}, "timestamp": "2024-05-01T12:00:00Z"})
@example({"content": {"type": "t"}, "role": "wizard"})
@example({"content": {"type": "t"}, "role": 1})
@example({"content": {"type": "t"}, "role": None})
@example({"content": {"type": "t"}, "id": "\ud800"})
@example({"content": {"type": "t"}, "context": {"labels": {"\udfff": "v"}}})
@example({"content": {"type": "t", "text": "\ud83d\ude00"}})
@example({"content": {"type": StrSub("t")}})
@example({"content": DictSub(type="t")})
@example(DictSub(content={"type": "t"}))
def test_near_misses_give_what_json_format_gives(data: Any) -> None:
    _check_same(data)


@pytest.mark.parametrize(
    "data",
    [
        {"content": {"type": "t"}, "context": {"replyTo": "m"}},
        {"content": {"type": "t"}, "timestamp": "2024-05-01T12:00:00Z"},
        {"content": {"type": "t"}, "seq": "1"},
        {"content": {"type": "t", "data": {}}},
        {"content": {"type": "t"}, "id": None},
        {"content": {"type": "t"}, "role": "wizard"},
        {"content": {"type": "t"}, "role": True},
        {"content": {"type": "t"}, "context": {"labels": {"a": 1}}},
        {"content": {"type": "t"}, "context": {"labels": None}},
        {"content": {"type": "t"}, "id": "\ud800"},
        {"content": {"type": "t", "text": StrSub("x")}},
        {"content": {"type": "t", "bogus": "x"}},
        DictSub(content={"type": "t"}),
    ],
)
def test_what_the_fast_path_leaves_to_json_format(data: dict[str, Any]) -> None:
    assert _parse_fast(data) is None
    _check_same(data)


@pytest.mark.parametrize(
    ("data", "present"),
    [
        ({"content": {}}, ["content"]),
        ({"content": {"type": "t"}, "context": {}}, ["content", "context"]),
        ({"content": {"type": "t"}, "context": {"labels": {}}}, ["content", "context"]),
        ({"role": "unspecified", "content": {"type": "t", "text": ""}}, ["content"]),
    ],
)
def test_an_empty_object_still_makes_its_submessage_present(
    data: dict[str, Any], present: list[str]
) -> None:
    fast = _parse_fast(data)
    assert fast is not None
    for name in ("content", "context"):
        assert fast.HasField(name) is (name in present)
    _check_same(data)


def test_the_typical_frame_takes_the_fast_path() -> None:
    data = json.loads(TYPICAL_FRAME)
    fast = _parse_fast(data)
    assert fast is not None
    assert fast.role == message_pb2.ROLE_USER
    assert message_from_dict(data) == _parse_slow(data) == fast


def test_the_fast_path_still_validates() -> None:
    for data, fragment in [
        ({"role": "user"}, "'content' is required"),
        ({"content": {}}, "'content.type' is required"),
        ({"content": {"type": "t"}, "id": "a" * (MAX_ID_CHARS + 1)}, "longer than"),
    ]:
        assert _parse_fast(data) is not None
        with pytest.raises(InvalidMessage, match=fragment):
            message_from_dict(data)


# ---------------------------------------------------------------------------
# decode_json and json_depth
# ---------------------------------------------------------------------------


def _reference_depth(value: Any) -> int:
    """The walk ``json_depth`` did before: depth first, with a stack."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _reference_decode(raw: bytes | str, max_bytes: int, max_depth: int) -> Any:
    """``decode_json`` as it was: ``json.loads`` with hooks, then the depth walk."""
    size = len(raw)
    if isinstance(raw, str) and size * 4 > max_bytes:
        size = len(raw.encode())
    if size > max_bytes:
        raise MessageTooLarge(f"message is {size} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(
            raw,
            parse_constant=translate._reject_constant,
            parse_float=translate._finite_float,
        )
    except RecursionError:
        raise InvalidMessage(f"JSON is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"malformed JSON: {exc}") from exc
    if _reference_depth(data) > max_depth:
        raise InvalidMessage(f"JSON is nested deeper than {max_depth} levels")
    return data


def _decoded(decode: Callable[..., Any], raw: Any, max_bytes: int, max_depth: int) -> Any:
    try:
        # repr tells 1 from 1.0 and -0.0 from 0.0, which == does not.
        return ("value", repr(decode(raw, max_bytes, max_depth)))
    except Exception as exc:
        return ("error", type(exc), getattr(exc, "message", str(exc)))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8, alphabet='ab[]{}"\\é'),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


def _nest(value: Any, levels: int, as_list: bool) -> Any:
    for _ in range(levels):
        value = [value] if as_list else {"k": value}
    return value


_texts = st.one_of(
    _values.map(json.dumps),
    st.builds(_nest, _values, st.integers(0, 40), st.booleans()).map(json.dumps),
    st.builds(_nest, _values, st.integers(0, 40), st.booleans()).map(
        lambda v: json.dumps(v, ensure_ascii=False)
    ),
    fast_shapes().map(json.dumps),
    st.text(max_size=60, alphabet='[]{}",:0123456789.eE-+ tnulrfaNIy\ufeff\\'),
    st.sampled_from(
        [
            "",
            "NaN",
            "-Infinity",
            "1e999",
            '{"a":-1e400}',
            "\ufeff{}",
            "[" * 5000 + "]" * 5000,
            '"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["',
            '{"a":"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"}',
        ]
    ),
)
_raws = st.one_of(
    _texts,
    _texts.map(str.encode),
    st.tuples(_texts, st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32-be"])).map(
        lambda pair: pair[0].encode(pair[1], "surrogatepass")
    ),
    st.binary(max_size=40),
)


@PROPERTY
@given(_raws, st.sampled_from([0, 1, 2, 3, 5, 8, 32]), st.sampled_from([1 << 20, 10, 200]))
@example("[[]]", 1, 1 << 20)
@example("[[]]", 2, 1 << 20)
@example('["[["]', 1, 1 << 20)
@example('{"a":{"b":[1]}}', 3, 1 << 20)
@example('{"a":{"b":[1]}}', 2, 1 << 20)
@example(b"\xff\xfe[\x00]\x00", 0, 1 << 20)
@example(bytearray(b"[1]"), 0, 1 << 20)
def test_decode_json_gives_what_json_loads_gives(
    raw: bytes | str, max_depth: int, max_bytes: int
) -> None:
    assert _decoded(decode_json, raw, max_bytes, max_depth) == _decoded(
        _reference_decode, raw, max_bytes, max_depth
    )


@PROPERTY
@given(_values | st.builds(_nest, _values, st.integers(0, 40), st.booleans()))
@example([[], [[[]]], {}])
@example({"a": [[{"b": {}}]], "c": 1})
def test_json_depth_is_the_deepest_nesting(value: Any) -> None:
    assert json_depth(value) == _reference_depth(value)


@pytest.mark.parametrize(
    ("value", "depth"),
    [(5, 0), ("x", 0), ([], 1), ({}, 1), ([[]], 2), ([1, [2, [3, {}]]], 4), ({"a": [[]] * 9}, 3)],
)
def test_json_depth_examples(value: Any, depth: int) -> None:
    assert json_depth(value) == depth


@pytest.mark.parametrize("raw", [memoryview(b"[1]"), 5, None])
def test_decode_json_refuses_other_types_as_before(raw: Any) -> None:
    got = _decoded(decode_json, raw, 1 << 20, 32)
    assert got[:2] == ("error", TypeError)
    assert got == _decoded(_reference_decode, raw, 1 << 20, 32)


# ---------------------------------------------------------------------------
# message_to_json
# ---------------------------------------------------------------------------


@st.composite
def messages(draw: st.DrawFn) -> Message:
    msg = Message(
        id=draw(TEXT),
        role=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 99])),
        seq=draw(st.integers(0, 2**64 - 1)),
    )
    if draw(st.booleans()):
        msg.content.type = draw(TEXT)
        msg.content.text = draw(st.text(max_size=20))
        if draw(st.booleans()):
            msg.content.data.update(draw(st.dictionaries(TEXT, _values, max_size=3)))
    if draw(st.booleans()):
        msg.context.conversation_id = draw(TEXT)
        msg.context.labels.update(draw(LABELS))
    if draw(st.booleans()):
        msg.timestamp.seconds = draw(st.integers(-62135596800, 253402300799))
        msg.timestamp.nanos = draw(st.integers(0, 999_999_999))
    return msg


@PROPERTY
@given(messages())
def test_message_to_json_is_what_json_dumps_writes(msg: Message) -> None:
    expected = json.dumps(message_to_dict(msg), separators=(",", ":"), ensure_ascii=False)
    assert message_to_json(msg) == expected
