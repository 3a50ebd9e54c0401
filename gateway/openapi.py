"""The OpenAPI 3.1 document of the HTTP surface, generated from the protobuf
descriptors (pure: no I/O).

The ``Message`` schema is derived from ``dialog.v1.Message`` with the JSON
mapping of ``gateway/translate.py``; only the paths are listed here. ``make gen``
writes it to ``docs/openapi.yaml``; the gateway serves it at ``/openapi.json``.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from dialog.v1 import message_pb2
from gateway.errors import ERROR_CLASSES
from gateway.translate import ROLE_PREFIX

VERSION = version("dialog-gateway")
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Struct": {"type": "object"},
}
SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    # 64-bit integers are JSON strings in the proto3 mapping (numbers accepted on input).
    FieldDescriptor.TYPE_UINT64: {"type": "string", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum_schema(enum: EnumDescriptor) -> dict[str, Any]:
    short = [v.name.removeprefix(ROLE_PREFIX).lower() for v in enum.values if v.number]
    return {"type": "string", "enum": short, "description": f"`{enum.full_name}`, lower case"}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, schemas)}
    if field.message_type is not None:
        schema = WELL_KNOWN.get(field.message_type.full_name)
        if schema is None:
            _message_schema(field.message_type, schemas)
            schema = _ref(field.message_type.name)
    elif field.enum_type is not None:
        schema = _enum_schema(field.enum_type)
    else:
        schema = SCALARS[field.type]
    is_repeated = field.is_repeated
    return {"type": "array", "items": schema} if is_repeated else dict(schema)


def _message_schema(message: Descriptor, schemas: dict[str, Any]) -> None:
    if message.name in schemas:
        return
    schemas[message.name] = {}  # placeholder against recursion
    schemas[message.name] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {f.name: _field_schema(f, schemas) for f in message.fields},
    }


def _responses(*statuses: int, ok: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for status in statuses:
        out[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    return out


def _error_responses() -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for cls in ERROR_CLASSES:
        by_status.setdefault(cls.http_status, []).append(cls.code)
    return {
        f"E{status}": {
            "description": "error: " + ", ".join(sorted(codes)),
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for status, codes in sorted(by_status.items())
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document."""
    schemas: dict[str, Any] = {}
    _message_schema(cast(Descriptor, message_pb2.Message.DESCRIPTOR), schemas)
    schemas["Message"]["required"] = ["content"]
    schemas["Content"]["required"] = ["type"]
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    json_ok: dict[str, Any] = {"description": "OK", "content": {"application/json": {"schema": {}}}}
    sse_ok: dict[str, Any] = {
        "description": "server-sent events",
        "content": {"text/event-stream": {}},
    }
    answer = {
        "type": "object",
        "required": ["message", "replies"],
        "properties": {
            "message": _ref("Message"),
            "replies": {"type": "array", "items": _ref("Message")},
        },
    }
    ticket = {
        "type": "object",
        "required": ["ticket", "expires_in_s"],
        "properties": {"ticket": {"type": "string"}, "expires_in_s": {"type": "number"}},
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    failures = (400, 401, 403, 404, 408, 413, 429, 431, 502, 503, 504)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dialog Gateway HTTP API",
            "version": version,
            "description": "JSON over HTTP; the WebSocket bridge at GET /ws carries the same "
            "Message JSON (see docs/protocol.md).",
        },
        "paths": {
            "/messages": {
                "post": {
                    "summary": "Send one message; get the stored message and its final replies",
                    "security": bearer,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Message")}},
                    },
                    "responses": _responses(
                        *failures,
                        ok={
                            "description": "the stored message and its replies",
                            "content": {
                                "application/json": {"schema": answer},
                                **sse_ok["content"],
                            },
                        },
                    ),
                }
            },
            "/ws-ticket": {
                "post": {
                    "summary": "A single-use ticket for /ws and /events/stream",
                    "security": bearer,
                    "responses": _responses(
                        401,
                        403,
                        429,
                        ok={**json_ok, "content": {"application/json": {"schema": ticket}}},
                    ),
                }
            },
            "/events/stream": {
                "get": {
                    "summary": "Server-sent events: every message delivered to the caller",
                    "security": bearer,
                    "responses": _responses(401, 403, ok=sse_ok),
                }
            },
            "/health": {
                "get": {
                    "summary": "Health of every back-end (public)",
                    "security": [],
                    "responses": {
                        "200": json_ok,
                        "503": {**json_ok, "description": "a required back-end is not serving"},
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "responses": _error_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
