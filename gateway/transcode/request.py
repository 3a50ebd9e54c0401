"""An HTTP request → the gRPC request message of its method (pure).

The message is built in three layers, each on top of the one before:

1. the JSON body, when the binding has one: the whole request (``body: "*"``) or one
   top-level field (``body: "task"``); an empty body is an empty object. A binding without
   a body refuses one;
2. the path variables (``/v1/tasks/{task.id}`` sets ``task.id``): they win over the body;
3. the query parameters, for the fields neither the path nor the body carries: a field
   path in proto or lowerCamel names (``page_size``, ``task.title``), repeated for a
   repeated field (``?ids=1&ids=2``); enums by name or number; well-known types in their
   JSON string form (``update_mask=title,done``, ``after=2026-01-01T00:00:00Z``). With
   ``body: "*"`` there are none. An unknown parameter is refused, like an unknown field.

Every value goes through protobuf's ``json_format`` with the message's own descriptor, so
that the body, the path and the query follow the one proto3 JSON mapping. A mistake is
``InvalidMessage`` (400) with a message that names the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from gateway.errors import InvalidMessage
from gateway.transcode.fields import (
    FieldPathError,
    is_map,
    is_scalar_like,
    parameter_value,
    put,
    resolve,
)
from gateway.transcode.rules import WHOLE
from gateway.transcode.template import Bindings
from gateway.translate import decode_json

Query = Sequence[tuple[str, str]]


def build_request(
    request_type: Descriptor,
    body_field: str,
    bindings: Bindings,
    query: Query,
    body: bytes,
    *,
    max_bytes: int,
    max_depth: int,
    pool: DescriptorPool | None = None,
) -> Message:
    """The request message of one HTTP request (see the module docstring)."""
    message = message_factory.GetMessageClass(request_type)()
    _body(message, body_field, body, max_bytes=max_bytes, max_depth=max_depth, pool=pool)
    tree: dict[str, Any] = {}
    bound: list[tuple[str, ...]] = []
    for field_path, text in bindings:
        fields = resolve(request_type, field_path)
        put(tree, fields, parameter_value(fields[-1], ".".join(field_path), text))
        bound.append(field_path)
    _parse(tree, message, pool)
    _parse(_query(request_type, body_field, bound, query), message, pool)
    return message


def _body(
    message: Message,
    body_field: str,
    body: bytes,
    *,
    max_bytes: int,
    max_depth: int,
    pool: DescriptorPool | None,
) -> None:
    if not body.strip():
        return
    if not body_field:
        raise InvalidMessage("this method takes no request body")
    value = decode_json(body, max_bytes, max_depth)
    if body_field == WHOLE:
        if not isinstance(value, dict):
            raise InvalidMessage("the request body must be a JSON object")
        _parse(value, message, pool)
    else:
        _parse({body_field: value}, message, pool)


def _query(
    request_type: Descriptor, body_field: str, bound: list[tuple[str, ...]], query: Query
) -> dict[str, Any]:
    """The proto3 JSON object of the query parameters."""
    if query and body_field == WHOLE:
        raise InvalidMessage(
            f"query parameter {query[0][0]!r} is not accepted: the body carries the request"
        )
    grouped: dict[tuple[str, ...], tuple[tuple[FieldDescriptor, ...], str, list[str]]] = {}
    for name, text in query:
        fields = _parameter_fields(request_type, name)
        path = tuple(f.name for f in fields)
        if any(_overlap(path, other) for other in bound):
            raise InvalidMessage(f"query parameter {name!r} is already set by the path")
        if body_field and path[0] == body_field:
            raise InvalidMessage(f"query parameter {name!r} belongs in the request body")
        grouped.setdefault(path, (fields, name, []))[2].append(text)
    tree: dict[str, Any] = {}
    for fields, name, texts in grouped.values():
        field = fields[-1]
        if not field.is_repeated and len(texts) > 1:
            raise InvalidMessage(f"query parameter {name!r} is not repeated")
        values = [parameter_value(field, name, text) for text in texts]
        put(tree, fields, values if field.is_repeated else values[0])
    return tree


def _parameter_fields(request_type: Descriptor, name: str) -> tuple[FieldDescriptor, ...]:
    try:
        fields = resolve(request_type, name.split("."), json_names=True)
    except FieldPathError as exc:
        raise InvalidMessage(f"unknown query parameter {name!r}: {exc}") from exc
    if is_map(fields[-1]) or not is_scalar_like(fields[-1]):
        raise InvalidMessage(f"query parameter {name!r} names a message field")
    return fields


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _parse(tree: dict[str, Any], message: Message, pool: DescriptorPool | None) -> None:
    """Merge the proto3 JSON object ``tree`` into ``message``."""
    if not tree:
        return
    try:
        json_format.ParseDict(tree, message, descriptor_pool=pool)
    # OverflowError: an integer too large for a double (in a Struct or a float field).
    except (json_format.ParseError, TypeError, ValueError, OverflowError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidMessage(f"invalid request: {text[:300]}") from exc
