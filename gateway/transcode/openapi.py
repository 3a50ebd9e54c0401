"""The OpenAPI 3.1 paths and schemas of the transcoded routes (pure).

``merged_document`` adds them to the gateway's own document (``gateway.openapi``), which
keeps its paths and schemas as they are; ``/openapi.json`` serves the result, so that it
follows what the back-ends serve now. Schemas are named by the full proto name
(``dialog.tasks.v1.Task``) and written in the JSON mapping of ``gateway.transcode.response``
(proto field names; lowerCamel names are accepted on input too). Every transcoded
operation may answer the one error shape, ``RpcError``, with the HTTP status of
``gateway.errors.GRPC_HTTP_STATUS``.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.transcode.fields import WRAPPERS, is_map, is_scalar_like
from gateway.transcode.rules import WHOLE
from gateway.transcode.table import Endpoint, TranscodingTable
from gateway.transcode.template import PathTemplate, Segment, SegmentKind

ERROR_SCHEMA = "RpcError"
PARAMETER = re.compile(r"\{([^}]*)\}")
OPERATIONS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
MAX_QUERY_DEPTH = 4  # nested messages whose fields become query parameters
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
_I64 = {"type": "string", "pattern": "^-?[0-9]+$", "format": "int64"}
_U64 = {"type": "string", "pattern": "^[0-9]+$", "format": "uint64"}
_I32 = {"type": "integer", "format": "int32"}
_U32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
T = FieldDescriptor
SCALARS: dict[int, dict[str, Any]] = {
    T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    T.TYPE_FLOAT: {"type": "number", "format": "float"},
    T.TYPE_INT64: _I64,
    T.TYPE_SINT64: _I64,
    T.TYPE_SFIXED64: _I64,
    T.TYPE_UINT64: _U64,
    T.TYPE_FIXED64: _U64,
    T.TYPE_INT32: _I32,
    T.TYPE_SINT32: _I32,
    T.TYPE_SFIXED32: _I32,
    T.TYPE_UINT32: _U32,
    T.TYPE_FIXED32: _U32,
    T.TYPE_BOOL: {"type": "boolean"},
    T.TYPE_STRING: {"type": "string"},
    T.TYPE_BYTES: {"type": "string", "format": "byte"},
}
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "field paths, comma-separated (`title,done`)",
    },
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
    },
}


def _message_type(field: FieldDescriptor) -> Descriptor:
    message = field.message_type
    assert message is not None, field.full_name
    return message


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "description": "the gRPC status, lower case"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": WELL_KNOWN["google.protobuf.Any"]},
                },
            }
        },
    }


class Schemas:
    """The component schemas of the messages and enums reached so far."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {ERROR_SCHEMA: error_schema()}

    def message(self, message: Descriptor) -> dict[str, Any]:
        """A reference to the schema of ``message`` (added with what it holds)."""
        known = WELL_KNOWN.get(message.full_name)
        if known is not None:
            return dict(known)
        if message.full_name in WRAPPERS:
            value = self.field(message.fields_by_name["value"])
            return {"anyOf": [value, {"type": "null"}]}
        name = message.full_name
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder against recursion
            properties = {f.name: self.field(f) for f in message.fields}
            self.schemas[name] = {"type": "object", "properties": properties}
        return _ref(name)

    def enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.schemas:
            self.schemas[enum.full_name] = {
                "anyOf": [
                    {"type": "string", "enum": [v.name for v in enum.values]},
                    {"type": "integer", "format": "int32"},
                ]
            }
        return _ref(enum.full_name)

    def field(self, field: FieldDescriptor, *, repeated: bool = True) -> dict[str, Any]:
        if is_map(field):
            value = self.field(_message_type(field).fields_by_name["value"])
            return {"type": "object", "additionalProperties": value}
        if field.message_type is not None:
            schema = self.message(field.message_type)
        elif field.enum_type is not None:
            schema = self.enum(field.enum_type)
        else:
            schema = dict(SCALARS[field.type])
        return {"type": "array", "items": schema} if repeated and field.is_repeated else schema


def openapi_path(template: PathTemplate) -> str:
    """The OpenAPI form of ``template``: each variable as ``{field.path}``, each wildcard
    outside a variable as ``{_N}``; a variable of several segments keeps its ``/``."""
    starts = {v.start: v for v in template.variables}
    parts: list[str] = []
    index = 0
    while index < len(template.segments):
        variable = starts.get(index)
        if variable is not None:
            parts.append("{" + variable.name + "}")
            index = variable.end
            continue
        segment = template.segments[index]
        literal = segment.kind is SegmentKind.LITERAL
        parts.append(segment.literal if literal else "{_" + str(index) + "}")
        index += 1
    return "/" + "/".join(parts) + (":" + template.verb if template.verb else "")


def _pattern_text(segment: Segment) -> str:
    return {SegmentKind.SINGLE: "*", SegmentKind.MULTI: "**"}.get(segment.kind, segment.literal)


def _path_parameters(endpoint: Endpoint, schemas: Schemas) -> list[dict[str, Any]]:
    template = endpoint.template
    if template is None:
        return []
    out = []
    for variable in template.variables:
        current: Descriptor = endpoint.request_type
        for name in variable.field_path[:-1]:
            current = _message_type(current.fields_by_name[name])
        field = current.fields_by_name[variable.field_path[-1]]
        schema = schemas.field(field)
        segments = template.segments[variable.start : variable.end]
        if [s.kind for s in segments] != [SegmentKind.SINGLE]:
            pattern = "/".join(_pattern_text(s) for s in segments)
            schema = {**schema, "description": f"matches `{pattern}` (`/` included)"}
        out.append({"name": variable.name, "in": "path", "required": True, "schema": schema})
    for index, segment in enumerate(template.segments):
        inside = any(v.start <= index < v.end for v in template.variables)
        if not inside and segment.kind is not SegmentKind.LITERAL:
            schema = {"type": "string"}
            out.append({"name": f"_{index}", "in": "path", "required": True, "schema": schema})
    return out


def _query_parameters(endpoint: Endpoint, schemas: Schemas) -> list[dict[str, Any]]:
    """Every field a query parameter may set: not bound by the path, not in the body."""
    if endpoint.body == WHOLE:
        return []
    bound = {v.field_path for v in endpoint.template.variables} if endpoint.template else set()
    out: list[dict[str, Any]] = []

    def walk(message: Descriptor, prefix: tuple[str, ...], seen: tuple[str, ...]) -> None:
        for field in message.fields:
            path = (*prefix, field.name)
            if path in bound or (not prefix and field.name == endpoint.body) or is_map(field):
                continue
            if is_scalar_like(field):
                schema = schemas.field(field)
                parameter = {"name": ".".join(path), "in": "query", "schema": schema}
                out.append(parameter)
                continue
            nested = _message_type(field)
            deep = len(path) >= MAX_QUERY_DEPTH or nested.full_name in seen
            if not field.is_repeated and not deep:
                walk(nested, path, (*seen, nested.full_name))

    walk(endpoint.request_type, (), (endpoint.request_type.full_name,))
    return out


def _request_body(endpoint: Endpoint, schemas: Schemas) -> dict[str, Any] | None:
    if not endpoint.body:
        return None
    if endpoint.body == WHOLE:
        schema = schemas.message(endpoint.request_type)
    else:
        schema = schemas.field(endpoint.request_type.fields_by_name[endpoint.body])
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _answer(endpoint: Endpoint, schemas: Schemas) -> dict[str, Any]:
    if endpoint.response_body:
        schema = schemas.field(endpoint.response_type.fields_by_name[endpoint.response_body])
    else:
        schema = schemas.message(endpoint.response_type)
    if not endpoint.streaming:
        return {"description": "the response", "content": {"application/json": {"schema": schema}}}
    line = {
        "oneOf": [
            {"type": "object", "required": ["result"], "properties": {"result": schema}},
            _ref(ERROR_SCHEMA),
        ]
    }
    return {
        "description": "a stream of responses: server-sent events (`event: message`, then "
        '`event: error` when the stream fails), or JSON lines (`{"result": …}`, then '
        '`{"error": …}` when it fails); JSON lines unless `Accept` asks for events',
        "content": {SSE: {"schema": {"type": "string"}}, NDJSON: {"schema": line}},
    }


def _operation(endpoint: Endpoint, schemas: Schemas, operation_id: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [endpoint.service],
        "summary": f"{endpoint.service}/{endpoint.method} on back-end {endpoint.backend!r}",
        "security": [{"bearer": []}],
        "parameters": _path_parameters(endpoint, schemas) + _query_parameters(endpoint, schemas),
        "responses": {
            "200": _answer(endpoint, schemas),
            "default": {
                "description": "an error of the gateway or of the back-end",
                "content": {"application/json": {"schema": _ref(ERROR_SCHEMA)}},
            },
        },
    }
    body = _request_body(endpoint, schemas)
    if body is not None:
        operation["requestBody"] = body
    return operation


def transcoded_paths(table: TranscodingTable) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paths and the component schemas of every route of ``table``."""
    schemas = Schemas()
    paths: dict[str, dict[str, Any]] = {}
    shapes: dict[str, str] = {}  # a path with "{}" for each parameter → its first path
    ids: dict[str, int] = {}
    endpoints = sorted(table.routes, key=lambda e: e.order) + list(table.rpcs.values())
    for endpoint in endpoints:
        verb = endpoint.http_method.lower()
        if verb not in OPERATIONS:
            continue  # a custom method OpenAPI cannot name, or a rule's "*"
        key = openapi_path(endpoint.template) if endpoint.template else endpoint.grpc_path
        # OpenAPI forbids two templated paths that differ only in their parameters' names
        # (/v1/tasks/{id}, /v1/tasks/{task.id}): the later takes the first one's names.
        shape = PARAMETER.sub("{}", key)
        first = shapes.setdefault(shape, key)
        names = dict(zip(PARAMETER.findall(key), PARAMETER.findall(first), strict=True))
        base = f"{endpoint.service}.{endpoint.method}"
        ids[base] = ids.get(base, 0) + 1
        operation = _operation(endpoint, schemas, base if ids[base] == 1 else f"{base}_{ids[base]}")
        for parameter in operation["parameters"]:
            field = parameter["name"]
            if parameter["in"] == "path" and names[field] != field:
                parameter["name"] = names[field]
                parameter["description"] = f"sets the request field `{field}`"
        paths.setdefault(first, {}).setdefault(verb, operation)
    return paths, schemas.schemas


def merged_document(own: dict[str, Any], table: TranscodingTable) -> dict[str, Any]:
    """``own`` with the transcoded paths and schemas added; what ``own`` has wins."""
    paths, schemas = transcoded_paths(table)
    components = dict(own.get("components", {}))
    own_schemas = components.get("schemas", {})
    components["schemas"] = {
        **own_schemas,
        **{k: v for k, v in schemas.items() if k not in own_schemas},
    }
    own_paths = own.get("paths", {})
    return {
        **own,
        "paths": {**own_paths, **{k: v for k, v in paths.items() if k not in own_paths}},
        "components": components,
    }
