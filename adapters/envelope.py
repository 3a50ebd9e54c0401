"""The Converse envelope rules every adapter shares (pure, no I/O).

Contract (see protos/dialog/backend/v1/backend.proto): for each request a
back-end sends zero or more ``delta`` replies and zero or more events
(role ROLE_EVENT), then exactly one final reply of any other type. Every reply
carries ``context.reply_to`` = the request's id. The caller's identity is the
``x-dialog-user`` metadata value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from dialog.v1 import message_pb2

Message = message_pb2.Message

USER_METADATA_KEY = "x-dialog-user"
DELTA = "delta"
TEXT = "text"
ERROR = "error"
INTERNAL_ERROR_TEXT = "internal error"
TIMEOUT_TEXT = "request timed out"
DEADLINE_TEXT = "deadline exceeded"
TOO_LARGE_TEXT = "reply too large"
# Room for the ConverseResponse framing around one message (field tag + length).
RESPONSE_OVERHEAD_BYTES = 16


def user_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The caller's identity from gRPC metadata, or None if missing or empty."""
    for key, value in metadata or ():
        if key.lower() == USER_METADATA_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return text.strip() or None
    return None


def time_left_s(timeouts: Mapping[str, duration_pb2.Duration], msg_id: str) -> float | None:
    """Seconds the gateway gives message ``msg_id`` (``ConverseRequest.timeouts``), or
    None when it set no deadline. Never negative."""
    if not msg_id or msg_id not in timeouts:
        return None
    left = timeouts[msg_id]
    return max(0.0, left.seconds + left.nanos / 1e9)


def is_final(msg: Message) -> bool:
    """A final reply is anything that is neither a delta nor an event."""
    return msg.content.type != DELTA and msg.role != message_pb2.ROLE_EVENT


def reply(content_type: str, text: str = "", data: dict[str, Any] | None = None, *,
          role: message_pb2.Role = message_pb2.ROLE_ASSISTANT) -> Message:
    """A reply to be stamped by ``stamp``; ``data`` must be JSON-like."""
    msg = Message(role=role)
    msg.content.type = content_type
    msg.content.text = text
    if data is not None:
        msg.content.data.CopyFrom(to_struct(data))
    return msg


def event(content_type: str, data: dict[str, Any]) -> Message:
    """An event reply (role ROLE_EVENT)."""
    return reply(content_type, data=data, role=message_pb2.ROLE_EVENT)


def error_reply(text: str) -> Message:
    """A final ``error`` reply; ``text`` must be safe to show to the client."""
    return reply(ERROR, text)


def to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    """A protobuf Struct from a JSON-like dict."""
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def stamp(out: Message, request: Message, *, reply_id: str, now_ns: int) -> Message:
    """A copy of ``out`` addressed as a reply to ``request``.

    Sets a fresh id and the timestamp, ``reply_to`` and ``conversation_id`` from
    the request, role ASSISTANT when unset, and the request's service and entity
    when the reply names none.
    """
    msg = Message()
    msg.CopyFrom(out)
    msg.id = reply_id
    msg.timestamp.FromNanoseconds(now_ns)
    if msg.role == message_pb2.ROLE_UNSPECIFIED:
        msg.role = message_pb2.ROLE_ASSISTANT
    msg.context.reply_to = request.id
    msg.context.conversation_id = request.context.conversation_id
    if not msg.context.service:
        msg.context.service = request.context.service
    if not msg.context.entity:
        msg.context.entity = request.context.entity
    return msg


def fit_reply(msg: Message, max_bytes: int) -> Message | None:
    """``msg`` if one response can carry it; else a small ``error`` final or None.

    An oversized final reply becomes an ``error`` final with the same id and
    context, so the contract still holds; an oversized delta or event is dropped.
    """
    if msg.ByteSize() + RESPONSE_OVERHEAD_BYTES <= max_bytes:
        return msg
    if not is_final(msg):
        return None
    small = Message(id=msg.id, role=msg.role, seq=msg.seq)
    small.context.CopyFrom(msg.context)
    small.timestamp.CopyFrom(msg.timestamp)
    small.content.type = ERROR
    small.content.text = TOO_LARGE_TEXT
    return small
