"""A back-end's answer → JSON, and a gRPC status → the one JSON error (pure).

Responses use the JSON mapping of the rest of the gateway: protobuf's canonical proto3 JSON
with the proto field names (``next_page_token``), fields at their default value left out,
64-bit integers as strings, enums by name, well-known types in their JSON forms.

Errors, of the back-end or of the gateway, have one shape::

    {"error": {"code": "not_found", "message": "task 7 not found", "details": [...]}}

``code`` is the gRPC status name in lower case (the gateway's own errors use their
``gateway.errors`` code, which is the same word where they overlap); the HTTP status is
``gateway.errors.http_status_of``; ``details`` are the ``google.rpc.Status`` details of the
``grpc-status-details-bin`` trailer, each an ``Any`` in its JSON form (``"@type"`` and the
message's fields; ``"value"``, base64, when no descriptor of that type is known).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from google.protobuf import any_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message
from google.rpc import (  # type: ignore[import-untyped]
    error_details_pb2,  # noqa: F401 (the standard details join the default pool)
    status_pb2,
)

from gateway.errors import BackendFailed, DialogError, http_status_of

DETAILS_TRAILER = "grpc-status-details-bin"


def decode_response(raw: bytes, response_type: Descriptor) -> Message:
    """The back-end's serialized answer as a message of ``response_type``."""
    try:
        return message_factory.GetMessageClass(response_type).FromString(raw)
    except DecodeError as exc:
        raise BackendFailed("the back-end's answer could not be decoded") from exc


def message_json(
    message: Message, response_body: str = "", pool: DescriptorPool | None = None
) -> Any:
    """The JSON of ``message``, or of its field ``response_body`` (at its default value
    when unset: ``[]``, ``{}``, ``0``, ``""``…, ``null`` for a message)."""
    try:
        data = json_format.MessageToDict(
            message, preserving_proto_field_name=True, descriptor_pool=pool
        )
        if not response_body or response_body in data:
            return data[response_body] if response_body else data
        full = json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
            descriptor_pool=pool,
        )
    # An Any of an unknown type, or a value the mapping cannot write (TypeError, KeyError).
    except (json_format.Error, TypeError, KeyError, ValueError) as exc:
        raise BackendFailed("the back-end's answer has no JSON form") from exc
    return full.get(response_body)


def status_json(
    code: str,
    message: str,
    trailers: Iterable[tuple[str, str | bytes]] = (),
    pool: DescriptorPool | None = None,
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the JSON error of a back-end's gRPC status ``code`` (a
    ``grpc.StatusCode`` name) with its ``message`` and trailers."""
    raw = next((v for k, v in trailers if k == DETAILS_TRAILER), b"")
    details = status_details(raw if isinstance(raw, bytes) else raw.encode("latin-1"), pool)
    body = {"error": {"code": code.lower(), "message": message, "details": details}}
    return http_status_of(code), body


def status_details(raw: bytes, pool: DescriptorPool | None = None) -> list[Any]:
    """The details of a serialized ``google.rpc.Status`` (none when it is malformed)."""
    if not raw:
        return []
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return []
    return [any_json(detail, pool) for detail in status.details]


def any_json(detail: any_pb2.Any, pool: DescriptorPool | None = None) -> Any:
    """An ``Any`` in its proto3 JSON form, read with ``pool``, then the default pool; as
    ``{"@type", "value"}`` (base64) when neither knows its type."""
    for each in (pool, None) if pool is not None else (None,):
        try:
            return json_format.MessageToDict(
                detail, preserving_proto_field_name=True, descriptor_pool=each
            )
        except (json_format.Error, TypeError, KeyError, ValueError):
            continue
    return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


def error_json(error: DialogError) -> dict[str, Any]:
    """The gateway's own ``error`` in the one shape (no details)."""
    body = error.to_json()
    inner = body["error"]
    assert isinstance(inner, dict)
    inner["details"] = []
    return body
