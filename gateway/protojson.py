"""Protobuf messages to their canonical JSON form, faster than ``json_format`` (pure).

``to_dict(msg)`` equals ``json_format.MessageToDict(msg, preserving_proto_field_name=True)``
and costs a fraction of it: the conversion of each field is chosen once per descriptor
and cached, instead of being looked up again for every value. It covers what messages
on the per-message path hold: strings, booleans, integers (64-bit ones as strings),
bytes (base64), open enums (by name), repeated and map fields, nested messages,
``Timestamp``, and ``Struct``/``Value``/``ListValue``. A message type with anything
else (floats, closed enums or enum values with options, wrappers, ``Any``, the other
well-known types, extensions) is converted by ``json_format`` itself, so the output
is always what ``json_format`` gives (tests/unit/test_protojson.py compares both).
"""

from __future__ import annotations

import base64
import datetime
import functools
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

Convert = Callable[[Any], Any]


class _NotFinite(Exception):
    """A ``Value`` holds NaN or an infinity, which JSON cannot: ``json_format`` says so."""


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_AS_IS = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
    }
)


def to_dict(msg: Message) -> dict[str, Any]:
    """The proto3 JSON form of ``msg`` with proto field names, as decoded JSON."""
    try:
        data: dict[str, Any] = _writer(msg.DESCRIPTOR)(msg)
    except _NotFinite:
        return _slow(msg)  # raises json_format's own error
    return data


def _slow(msg: Message) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return data


_EPOCH = datetime.datetime(1970, 1, 1)
# The range ``Timestamp.ToJsonString`` accepts: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TIMESTAMP_SECONDS_MIN = -62135596800
_TIMESTAMP_SECONDS_MAX = 253402300799


def _timestamp(msg: Any) -> Any:
    """``msg.ToJsonString()``, written directly: whole seconds, or 3, 6 or 9 digits after."""
    seconds, nanos = msg.seconds, msg.nanos
    if not (
        _TIMESTAMP_SECONDS_MIN <= seconds <= _TIMESTAMP_SECONDS_MAX and 0 <= nanos < 1_000_000_000
    ):
        return msg.ToJsonString()  # raises protobuf's own error
    text = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()
    if not nanos:
        return text + "Z"
    if not nanos % 1_000_000:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if not nanos % 1000:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _value(msg: Any) -> Any:
    kind = msg.WhichOneof("kind")
    if kind == "string_value":
        return msg.string_value
    if kind == "number_value":
        number = msg.number_value
        if not math.isfinite(number):
            raise _NotFinite
        return number
    if kind == "bool_value":
        return msg.bool_value
    if kind == "struct_value":
        return _struct(msg.struct_value)
    if kind == "list_value":
        return _list_value(msg.list_value)
    return None  # null_value, or not set


def _struct(msg: Any) -> dict[str, Any]:
    return {key: _value(value) for key, value in msg.fields.items()}


def _list_value(msg: Any) -> list[Any]:
    return [_value(value) for value in msg.values]


# Well-known types with a JSON form of their own that this module writes itself.
_WELL_KNOWN: dict[str, Convert] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Struct": _struct,
    "google.protobuf.Value": _value,
    "google.protobuf.ListValue": _list_value,
}


@functools.cache
def _writer(descriptor: Descriptor) -> Convert:
    """How to write a message of this type: its fields' conversions, or ``_slow``."""
    special = _WELL_KNOWN.get(descriptor.full_name)
    if special is not None:
        return special
    if descriptor.full_name.startswith("google.protobuf."):
        return _slow  # the other well-known types and the wrappers
    fields: dict[FieldDescriptor, tuple[str, Convert]] = {}
    for field in descriptor.fields:
        convert = _field(field)
        if convert is None:
            return _slow
        fields[field] = (field.name, convert)

    def write(msg: Message) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field, value in msg.ListFields():
            entry = fields.get(field)
            if entry is None:  # an extension
                return _slow(msg)
            out[entry[0]] = entry[1](value)
        return out

    return write


def _field(field: FieldDescriptor) -> Convert | None:
    """The conversion of a field's value (a list or a map for those), or None when
    ``json_format`` must write the message."""
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        convert_value = _single(entry.fields_by_name["value"])
        if convert_value is None:
            return None
        return lambda values: {_map_key(k): convert_value(v) for k, v in values.items()}
    convert = _single(field)
    if convert is None or not field.is_repeated:
        return convert
    return lambda values: [convert(v) for v in values]


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _single(field: FieldDescriptor) -> Convert | None:
    kind = field.type
    if kind in _AS_IS:
        return _same
    if kind in _INT64:
        return str
    if kind == FieldDescriptor.TYPE_BYTES:
        return _base64
    if kind == FieldDescriptor.TYPE_MESSAGE:
        # Looked up at call time: a message type may contain itself.
        return _nested
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(field)
    return None  # float, double, group


def _same(value: Any) -> Any:
    return value


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _nested(msg: Message) -> Any:
    return _writer(msg.DESCRIPTOR)(msg)


def _enum(field: FieldDescriptor) -> Convert | None:
    enum = field.enum_type
    if enum is None:
        return None
    if enum.full_name == "google.protobuf.NullValue" or enum.is_closed:
        return None
    if any(value.has_options for value in enum.values):
        return None  # a value may carry its own JSON name
    names = {value.number: value.name for value in enum.values}
    # An open enum's number this build does not know is written as the number.
    return lambda number: names.get(number, number)
