"""The OpenAPI 3.1 document of the HTTP surface, generated from the protobuf
descriptors (pure: no I/O).

The message schemas are derived from ``dialog.v1.Message`` with the JSON mapping of
``gateway/translate.py``, twice: ``MessageInput`` is what a client may send (the checks
of ``message_from_dict`` and ``accept_client_message``), ``Message`` is what the gateway
sends back (its stored form, and replies as the back-ends wrote them). ``make gen``
writes the document to ``docs/openapi.yaml``; the gateway serves it at ``/openapi.json``,
with the back-ends' transcoded routes added at runtime (``gateway.transcode.openapi``).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from dialog.v1 import message_pb2
from gateway.errors import ERROR_CLASSES
from gateway.health_state import Status
from gateway.translate import MAX_ID_CHARS, ROLE_PREFIX

VERSION = version("dialog-gateway")
INPUT = "Input"  # suffix of the request-body schemas
UINT64_MAX = 2**64 - 1
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
IGNORED = "Accepted and ignored: the gateway sets it."
# translate: a null role is refused, and so are a null content and content.type (required).
NOT_NULLABLE = frozenset({"role", "content", "type"})


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum_schema(enum: EnumDescriptor) -> dict[str, Any]:
    short = [v.name.removeprefix(ROLE_PREFIX).lower() for v in enum.values if v.number]
    return {
        "anyOf": [
            {"type": "string", "enum": short},
            # translate.message_to_dict: a value this build does not know stays a number.
            {"type": "integer", "minimum": 0},
        ],
        "description": f"`{enum.full_name}`, lower case, without the `{ROLE_PREFIX}` prefix",
    }


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any], suffix: str) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, schemas, suffix)}
    if field.message_type is not None:
        schema = WELL_KNOWN.get(field.message_type.full_name)
        if schema is None:
            schema = _ref(_message_schema(field.message_type, schemas, suffix))
    elif field.enum_type is not None:
        schema = _enum_schema(field.enum_type)
    else:
        schema = SCALARS[field.type]
    return {"type": "array", "items": schema} if field.is_repeated else dict(schema)


def _message_schema(message: Descriptor, schemas: dict[str, Any], suffix: str = "") -> str:
    """Add the schema of ``message`` (and of the messages it holds) as ``<Name><suffix>``."""
    name = message.name + suffix
    if name not in schemas:
        schemas[name] = {}  # placeholder against recursion
        schemas[name] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: _field_schema(f, schemas, suffix) for f in message.fields},
        }
    return name


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or JSON ``null``: proto3 JSON reads ``null`` as the field's default."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _client_rules(schemas: dict[str, Any]) -> None:
    """Narrow the ``*Input`` schemas to what ``translate`` accepts from a client."""
    message = schemas["Message" + INPUT]
    message["required"] = ["content"]
    message["description"] = (
        "A client's message. lowerCamel field names (`conversationId`) are accepted too; "
        "the role may be written in any case or in its proto form (`ROLE_USER`). As in "
        "proto3 JSON, `null` stands for an absent field, except for `role` and `content`."
    )
    fields = message["properties"]
    fields["role"] = {"type": "string", "enum": ["user", "ROLE_USER"]}
    fields["id"]["maxLength"] = MAX_ID_CHARS
    fields["id"]["description"] = "The idempotency key; the gateway assigns one when empty."
    fields["seq"] = {
        "anyOf": [
            {"type": "string", "pattern": "^[0-9]{1,19}$"},
            {"type": "integer", "minimum": 0, "maximum": UINT64_MAX},
        ],
        "description": IGNORED,
    }
    # Protobuf reads RFC 3339 within years 0001-9999 UTC; an offset may push it out.
    fields["timestamp"] = {**fields["timestamp"], "pattern": "Z$", "description": IGNORED}
    content = schemas["Content" + INPUT]
    content["required"] = ["type"]
    content["properties"]["type"]["minLength"] = 1
    content["properties"]["data"]["description"] = (
        "Any JSON object; numbers must fit a double. The whole message is at most "
        "JSON_MAX_DEPTH levels deep."
    )
    schemas["Context" + INPUT]["properties"]["reply_to"]["description"] = IGNORED
    for name, schema in schemas.items():
        if name.endswith(INPUT):
            properties = schema["properties"]
            for field in set(properties) - NOT_NULLABLE:
                properties[field] = _nullable(properties[field])


def _schemas() -> dict[str, Any]:
    descriptor = cast(Descriptor, message_pb2.Message.DESCRIPTOR)
    schemas: dict[str, Any] = {}
    _message_schema(descriptor, schemas)
    _message_schema(descriptor, schemas, INPUT)
    _client_rules(schemas)
    schemas["Message"]["description"] = (
        "A message as the gateway sends it: the stored form of a client's message, or a "
        "reply as its back-end wrote it, with `reply_to`, `timestamp` and `seq` set."
    )
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
    schemas["Health"] = _health_schema()
    return schemas


def _health_schema() -> dict[str, Any]:
    status = {"type": "string", "enum": [s.value for s in Status]}
    backend = {
        "type": "object",
        "required": ["status", "required"],
        "properties": {
            "status": status,
            "required": {"type": "boolean"},
            "last_check_latency_ms": {"type": ["number", "null"]},
            "last_success_at": {"type": ["string", "null"], "format": "date-time"},
            "consecutive_failures": {"type": "integer", "minimum": 0},
            "checks_total": {"type": "integer", "minimum": 0},
            "failures_total": {"type": "integer", "minimum": 0},
        },
    }
    overall = {"type": "string", "enum": [*(s.value for s in Status), "DRAINING"]}
    store = {"type": "object", "required": ["status"], "properties": {"status": status}}
    return {
        "type": "object",
        "required": ["status", "backends"],
        "properties": {
            "status": overall,
            "backends": {"type": "object", "additionalProperties": backend},
            "store": store,
            "jwks": {"type": "object", "description": "present when a JWKS is configured"},
        },
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


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


SSE: dict[str, Any] = {"text/event-stream": {}}
EXAMPLES = {
    "chat": {"value": {"role": "user", "content": {"type": "text", "text": "Ping"}}},
    "task": {
        "value": {
            "content": {"type": "task.create", "text": "buy milk"},
            "context": {"service": "tasks"},
        }
    },
}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
PUBLIC: list[dict[str, list[str]]] = []


def _post_messages() -> dict[str, Any]:
    answer = {
        "type": "object",
        "required": ["message", "replies"],
        "properties": {
            "message": _ref("Message"),
            "replies": {"type": "array", "items": _ref("Message")},
            "status": {"type": "string", "enum": ["queued"]},
        },
    }
    ok = _json("the stored message and its final replies and events (no deltas)", answer)
    ok["content"].update(SSE)  # with Accept: text/event-stream: ack, then every reply
    queued = _json(
        "the back-end is unavailable: the message is queued durably and will be delivered;"
        " its replies go to the event stream",
        answer,
    )
    failures = (400, 401, 403, 404, 408, 409, 413, 429, 431, 502, 503, 504)
    return {
        "summary": "Send one message; get the stored message and its final replies",
        "security": BEARER,
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "The message id when the body has none (empty: none).",
                "schema": {"type": "string", "maxLength": MAX_ID_CHARS},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("Message" + INPUT), "examples": EXAMPLES}
            },
        },
        "responses": {**_responses(*failures, ok=ok), "202": queued},
    }


def _paths() -> dict[str, Any]:
    ticket = {
        "type": "object",
        "required": ["ticket", "expires_in_s"],
        "properties": {"ticket": {"type": "string"}, "expires_in_s": {"type": "number"}},
    }
    return {
        "/messages": {"post": _post_messages()},
        "/ws-ticket": {
            "post": {
                "summary": "A single-use ticket for /ws and /events/stream",
                "security": BEARER,
                "responses": _responses(401, 403, 429, ok=_json("the ticket", ticket)),
            }
        },
        "/events/stream": {
            "get": {
                "summary": "Server-sent events: every message delivered to the caller",
                "security": [{"bearer": []}, {"ticket": []}],
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after this seq (from the recent history).",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": _responses(
                    401, 403, ok={"description": "server-sent events", "content": SSE}
                ),
            }
        },
        "/health": {
            "get": {
                "summary": "Health of every back-end (public)",
                "security": PUBLIC,
                "responses": {
                    "200": _json("every required back-end is serving", _ref("Health")),
                    "503": _json("a required back-end is not serving", _ref("Health")),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: public, unless METRICS_TOKEN is set; not here "
                "when ADMIN_PORT moves them to the admin listener",
                "security": PUBLIC,
                "responses": _responses(
                    401,
                    ok={
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                ),
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": BEARER,
                "responses": _responses(401, ok=_json("OpenAPI 3.1", {"type": "object"})),
            }
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dialog Gateway HTTP API",
            "version": version,
            "description": "JSON over HTTP; the WebSocket bridge at GET /ws carries the same "
            "Message JSON (see docs/protocol.md).",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _error_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "ticket": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "ticket",
                    "description": "A single-use ticket from POST /ws-ticket, for EventSource",
                },
            },
        },
    }
