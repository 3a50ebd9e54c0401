"""Field paths of a request message, and the JSON values of path and query parameters (pure).

A path variable or a query parameter names a field by its path from the request message
(``task.id``). It may set a scalar, an enum (by name or number), or a well-known type whose
JSON is a scalar: ``Timestamp``, ``Duration``, ``FieldMask`` and the wrappers
(``StringValue``…). The text of the parameter becomes the value the proto3 JSON mapping
reads for that field (``parameter_value``), so that ``json_format`` does the parsing: 64-bit
integers, enums, base64 bytes and the well-known types all follow the one mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.errors import InvalidMessage

WRAPPERS = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
# Well-known types whose proto3 JSON form is a string.
STRING_FORMS = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
BOOLEANS = {"true": True, "false": False}


class FieldPathError(ValueError):
    """A field path that the message does not have; the message says which part."""


def find_field(message: Descriptor, name: str, *, json_names: bool) -> FieldDescriptor | None:
    """The field ``name`` of ``message``: its proto name, or, with ``json_names``, also its
    JSON (lowerCamel) name."""
    field = message.fields_by_name.get(name)
    if field is None and json_names:
        field = next((f for f in message.fields if f.json_name == name), None)
    return field


def resolve(
    message: Descriptor, path: Sequence[str], *, json_names: bool = False
) -> tuple[FieldDescriptor, ...]:
    """The fields along ``path`` from ``message``; every field but the last must be a
    singular message. Raises ``FieldPathError``."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for i, name in enumerate(path):
        so_far = ".".join(path[: i + 1])
        if current is None:
            raise FieldPathError(f"{'.'.join(path[:i])!r} is not a message field")
        field = find_field(current, name, json_names=json_names)
        if field is None:
            raise FieldPathError(f"{message.full_name} has no field {so_far!r}")
        if i < len(path) - 1 and (field.is_repeated or is_scalar_like(field) or is_map(field)):
            raise FieldPathError(f"{so_far!r} is not a singular message field")
        fields.append(field)
        current = field.message_type
    return tuple(fields)


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_scalar_like(field: FieldDescriptor) -> bool:
    """Whether a parameter's text can set ``field``: a scalar, an enum, or a well-known
    type whose JSON is a scalar (repetition aside)."""
    if field.message_type is None:
        return True
    return field.message_type.full_name in WRAPPERS | STRING_FORMS


def parameter_value(field: FieldDescriptor, name: str, text: str) -> Any:
    """The proto3 JSON value of the parameter ``name`` = ``text`` for ``field``."""
    if field.message_type is not None and field.message_type.full_name in WRAPPERS:
        return parameter_value(field.message_type.fields_by_name["value"], name, text)
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in BOOLEANS:
            raise InvalidMessage(f"parameter {name!r} must be true or false")
        return BOOLEANS[text]
    return text


def put(tree: dict[str, Any], fields: Sequence[FieldDescriptor], value: Any) -> None:
    """Set ``value`` at ``fields`` in a proto3 JSON object (proto names), creating the
    objects on the way."""
    for field in fields[:-1]:
        tree = tree.setdefault(field.name, {})
    tree[fields[-1].name] = value
