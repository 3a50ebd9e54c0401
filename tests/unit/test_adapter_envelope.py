"""The Converse envelope rules: identity, finality, stamping, size."""

from __future__ import annotations

from datetime import timedelta

import pytest

from adapters.envelope import (
    error_reply,
    event,
    fit_reply,
    is_final,
    reply,
    stamp,
    time_left_s,
    to_struct,
    user_from_metadata,
)
from dialog.backend.v1 import backend_pb2
from dialog.v1 import message_pb2


@pytest.mark.parametrize(
    ("metadata", "user"),
    [
        ((("x-dialog-user", "alice"),), "alice"),
        ((("user-agent", "grpc"), ("x-dialog-user", " bob ")), "bob"),
        ((("X-Dialog-User", "carol"),), "carol"),
        ((("x-dialog-user", b"dave"),), "dave"),
        ((("x-dialog-user", ""),), None),
        ((("x-dialog-user", "   "),), None),
        ((("authorization", "Bearer x"),), None),
        ((), None),
        (None, None),
    ],
)
def test_user_from_metadata(metadata, user) -> None:
    assert user_from_metadata(metadata) == user


@pytest.mark.parametrize(
    ("msg", "final"),
    [
        (reply("delta", "x"), False),
        (event("task.created", {}), False),
        (event("delta", {}), False),
        (reply("text", "x"), True),
        (reply("task", data={}), True),
        (error_reply("nope"), True),
        (message_pb2.Message(), True),
    ],
)
def test_is_final(msg, final) -> None:
    assert is_final(msg) is final


def request() -> message_pb2.Message:
    msg = message_pb2.Message(id="req-1", role=message_pb2.ROLE_USER)
    msg.context.conversation_id = "conv"
    msg.context.service = "tasks"
    msg.context.entity = "7"
    return msg


def test_stamp_addresses_the_reply_and_leaves_the_original_alone() -> None:
    out = message_pb2.Message()
    out.content.type = "text"
    stamped = stamp(out, request(), reply_id="r1", now_ns=1_700_000_000_123_000_000)
    assert stamped.id == "r1"
    assert stamped.role == message_pb2.ROLE_ASSISTANT
    assert stamped.context.reply_to == "req-1"
    assert stamped.context.conversation_id == "conv"
    assert (stamped.context.service, stamped.context.entity) == ("tasks", "7")
    assert stamped.timestamp.ToNanoseconds() == 1_700_000_000_123_000_000
    assert out.id == "" and not out.HasField("timestamp")


def test_stamp_keeps_the_replys_own_role_and_entity() -> None:
    out = event("task.created", {"id": "9"})
    out.context.entity = "9"
    out.context.conversation_id = "forged"
    stamped = stamp(out, request(), reply_id="r2", now_ns=0)
    assert stamped.role == message_pb2.ROLE_EVENT
    assert stamped.context.entity == "9"
    assert stamped.context.conversation_id == "conv"


def test_reply_carries_json_data() -> None:
    msg = reply("task", data={"id": "1", "done": False, "tags": ["a"]})
    assert msg.content.data["id"] == "1"
    assert msg.content.data["done"] is False
    assert list(msg.content.data["tags"]) == ["a"]
    assert to_struct({"n": 1})["n"] == 1.0


def test_fit_reply_passes_small_replies_through() -> None:
    msg = reply("text", "small")
    assert fit_reply(msg, 1024) is msg


def test_fit_reply_turns_an_oversized_final_into_an_error_with_the_same_address() -> None:
    msg = stamp(reply("text", "x" * 2000), request(), reply_id="r3", now_ns=5)
    fitted = fit_reply(msg, 1024)
    assert fitted is not None
    assert (fitted.content.type, fitted.content.text) == ("error", "reply too large")
    assert (fitted.id, fitted.context.reply_to) == ("r3", "req-1")
    assert fitted.ByteSize() < 1024


def test_fit_reply_drops_an_oversized_delta() -> None:
    assert fit_reply(reply("delta", "x" * 2000), 1024) is None


def test_time_left_is_read_by_message_id() -> None:
    request = backend_pb2.ConverseRequest()
    request.timeouts["m1"].FromTimedelta(timedelta(milliseconds=1500))
    request.timeouts["m0"].FromTimedelta(timedelta(0))
    assert time_left_s(request.timeouts, "m1") == 1.5
    assert time_left_s(request.timeouts, "m0") == 0.0
    assert time_left_s(request.timeouts, "other") is None
    assert time_left_s(request.timeouts, "") is None
