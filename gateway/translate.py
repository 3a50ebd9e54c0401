"""JSON <-> protobuf translation of the ``Message`` envelope (pure, no I/O).

The JSON mapping is protobuf's canonical proto3 JSON mapping with two
conveniences: field names are written in their proto form (``reply_to``), and
``role`` is the lower-case short name (``"user"``). Both the proto form
(``"ROLE_USER"``) and lowerCamel field names are accepted on input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from dialog.v1 import message_pb2
from gateway import protojson
from gateway.errors import DialogError, InvalidMessage, MessageTooLarge

Message = message_pb2.Message

ROLE_PREFIX = "ROLE_"
ACK = "ack"
ERROR = "error"
DELTA = "delta"
AUTH = "auth"
RESET = "reset"
QUEUED = "queued"
MAX_ID_CHARS = 128
DEFAULT_MAX_DEPTH = 32


def _role_in(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidMessage("'role' must be a string such as \"user\"")
    return value.upper() if value.upper().startswith(ROLE_PREFIX) else ROLE_PREFIX + value.upper()


def _role_out(value: Any) -> Any:
    # An enum number this build does not know is rendered as the number.
    return value.removeprefix(ROLE_PREFIX).lower() if isinstance(value, str) else value


def _reject_constant(name: str) -> Any:
    raise InvalidMessage(f"malformed JSON: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidMessage(f"malformed JSON: the number {text[:20]} is out of range")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), computed without recursion."""
    # A level at a time: each pass collects the children of the level's containers.
    depth, level = 0, [value]
    while True:
        below: list[Any] = []
        found = False
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
                found = True
            elif isinstance(item, list):
                below.extend(item)
                found = True
        if not found:
            return depth
        depth += 1
        level = below


# ``json.loads`` with hooks builds a new decoder on every call; this one is built once.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _loads(raw: bytes | str) -> tuple[Any, str]:
    """``json.loads(raw, parse_constant=..., parse_float=...)`` and the decoded text."""
    # What ``json.loads`` does before decoding, with its errors.
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        text = raw
    elif isinstance(raw, bytes | bytearray):
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    else:
        raise TypeError(
            f"the JSON object must be str, bytes or bytearray, not {raw.__class__.__name__}"
        )
    return _DECODER.decode(text), text


def decode_json(raw: bytes | str, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON text: size first, then syntax, finite numbers and nesting depth."""
    size = len(raw)
    if isinstance(raw, str) and size * 4 > max_bytes:
        # A character takes 1 to 4 bytes in UTF-8: encode only when the limit is in reach.
        size = len(raw.encode())
    if size > max_bytes:
        raise MessageTooLarge(f"message is {size} bytes; the limit is {max_bytes}")
    try:
        data, text = _loads(raw)
    except RecursionError:
        raise InvalidMessage(f"JSON is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"malformed JSON: {exc}") from exc
    # Every array and object comes from its own "[" or "{" in the text, so a text with
    # no more of them than ``max_depth`` cannot nest deeper: skip the walk.
    if text.count("{") + text.count("[") > max_depth and json_depth(data) > max_depth:
        raise InvalidMessage(f"JSON is nested deeper than {max_depth} levels")
    return data


_MESSAGE_KEYS = frozenset({"id", "role", "content", "context"})
_CONTENT_KEYS = frozenset({"type", "text"})
_CONTEXT_KEYS = frozenset({"conversation_id", "entity", "service", "reply_to", "labels"})
_ROLE_NUMBERS: dict[str, int] = {v.name: v.number for v in message_pb2.Role.DESCRIPTOR.values}


def message_from_dict(data: Any) -> Message:
    """Build and validate a client ``Message`` from decoded JSON."""
    if not isinstance(data, dict):
        raise InvalidMessage("a message must be a JSON object")
    msg = _parse_fast(data)
    if msg is None:
        msg = _parse_slow(data)
    validate_client_message(msg)
    return msg


def _parse_slow(data: dict[Any, Any]) -> Message:
    """The ``Message`` that ``json_format`` parses from ``data`` (not validated)."""
    data = dict(data)
    if "role" in data:
        data["role"] = _role_in(data["role"])
    msg = Message()
    try:
        json_format.ParseDict(data, msg, ignore_unknown_fields=False)
    # OverflowError: an integer too large for a double in ``content.data`` (a Struct).
    except (json_format.ParseError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(_parse_error_text(exc)) from exc
    return msg


def _parse_fast(data: dict[Any, Any]) -> Message | None:
    """``_parse_slow(data)`` for the common shape, built directly; None for anything else.

    The shape: only the proto field names ``id``, ``role``, ``content`` (``type``,
    ``text``) and ``context`` (``conversation_id``, ``entity``, ``service``,
    ``reply_to``, ``labels``), strings where the proto has strings (exactly ``str``:
    no nulls, numbers or booleans), objects where it has messages and maps, and a
    role that names a ``Role``. ``json_format`` would set exactly these values, and an
    object for ``content`` or ``context`` marks it present even when empty, as here.
    The rest (lowerCamel names, ``timestamp``, ``seq``, ``content.data``, nulls,
    anything to convert or to refuse) is left to ``_parse_slow``, for its result and
    its error texts.
    """
    if type(data) is not dict or not data.keys() <= _MESSAGE_KEYS:
        return None
    fields = data
    for key, value in data.items():
        if key == "role":
            if type(value) is not str:
                return None
            number = _ROLE_NUMBERS.get(_role_in(value))
            if number is None:
                return None
            fields = dict(data)
            fields["role"] = number
        elif key == "content":
            if type(value) is not dict or not value.keys() <= _CONTENT_KEYS:
                return None
            for text in value.values():
                if type(text) is not str:
                    return None
        elif key == "context":
            if type(value) is not dict or not value.keys() <= _CONTEXT_KEYS:
                return None
            for name, text in value.items():
                if name == "labels":
                    if not _str_to_str(text):
                        return None
                elif type(text) is not str:
                    return None
        elif type(value) is not str:  # id
            return None
    try:
        return Message(**fields)
    except (ValueError, TypeError):
        return None  # a surrogate, which protobuf cannot encode: json_format words the error


def _str_to_str(value: Any) -> bool:
    if type(value) is not dict:
        return False
    return all(type(key) is str and type(text) is str for key, text in value.items())


def validate_client_message(msg: Message) -> None:
    """The checks every surface applies to a client's message."""
    if not msg.HasField("content"):
        raise InvalidMessage("'content' is required")
    if not msg.content.type:
        raise InvalidMessage("'content.type' is required")
    if len(msg.id) > MAX_ID_CHARS:
        raise InvalidMessage(f"'id' is longer than {MAX_ID_CHARS} characters")


def _parse_error_text(exc: Exception) -> str:
    # json_format messages name the field and the problem; keep the first line only.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"invalid message: {text[:300]}"


def parse_message(raw: bytes | str, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Message:
    """Decode one JSON text into a validated ``Message``."""
    return message_from_dict(decode_json(raw, max_bytes, max_depth))


def message_to_dict(msg: Message) -> dict[str, Any]:
    """The JSON form of a ``Message`` (proto field names, short role)."""
    data = protojson.to_dict(msg)
    if "role" in data:
        data["role"] = _role_out(data["role"])
    return data


# What ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)`` uses, built once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def message_to_json(msg: Message) -> str:
    """Compact JSON text of a ``Message``."""
    return _ENCODER.encode(message_to_dict(msg))


def accept_client_message(msg: Message, *, now_s: float, new_id: Callable[[], str]) -> Message:
    """Check a client message and set the server-owned fields.

    Clients may write only as ``user``. The gateway owns ``timestamp`` and
    ``seq`` and assigns an ``id`` when the client sent none.
    """
    if msg.role not in (message_pb2.ROLE_UNSPECIFIED, message_pb2.ROLE_USER):
        raise InvalidMessage("clients may only send messages with role 'user'")
    out = Message()
    out.CopyFrom(msg)
    out.role = message_pb2.ROLE_USER
    if not out.id:
        out.id = new_id()
    out.seq = 0
    out.context.reply_to = ""
    set_time(out, now_s)
    return out


def set_time(msg: Message, now_s: float) -> None:
    """Stamp ``msg.timestamp`` from a clock reading in seconds."""
    ts = Timestamp()
    ts.FromNanoseconds(int(now_s * 1e9))
    msg.timestamp.CopyFrom(ts)


def make_ack(msg: Message, *, replay: bool = False, status: str = "") -> Message:
    """The ack for an accepted message: same id and seq, ``content.type`` "ack"; a repeated
    id answered from its recorded outcome is marked ``data.replay``, and a message kept
    for later delivery has ``data.status`` "queued"."""
    ack = Message(id=msg.id, role=message_pb2.ROLE_SYSTEM, seq=msg.seq)
    ack.content.type = ACK
    ack.context.reply_to = msg.id
    ack.context.conversation_id = msg.context.conversation_id
    ack.timestamp.CopyFrom(msg.timestamp)
    if replay:
        ack.content.data.update({"replay": True})
    if status:
        ack.content.data.update({"status": status})
    return ack


def make_error(err: DialogError, reply_to: str = "") -> Message:
    """An in-band error message (``content.type`` "error") for streams and sockets."""
    out = Message(role=message_pb2.ROLE_SYSTEM)
    out.content.type = ERROR
    out.content.text = err.message
    out.content.data.update({**err.details, "code": err.code, "message": err.message})
    out.context.reply_to = reply_to
    return out


def make_reset(last_seq: int) -> Message:
    """Tells a resuming client that part of what it asked for was already trimmed."""
    out = Message(role=message_pb2.ROLE_SYSTEM)
    out.content.type = RESET
    out.content.text = "events before the oldest kept one were trimmed; resynchronize"
    out.content.data.update({"last_seq": last_seq})
    return out


def is_queued(msg: Message) -> bool:
    """True for the ack of a message kept in the durable queue for later delivery."""
    data = msg.content.data
    return msg.content.type == ACK and "status" in data and data["status"] == QUEUED


def is_final(msg: Message) -> bool:
    """True for the reply that ends a request: not a delta and not an event."""
    return msg.content.type != DELTA and msg.role != message_pb2.ROLE_EVENT
