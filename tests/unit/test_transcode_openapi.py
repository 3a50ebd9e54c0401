"""The OpenAPI document of the transcoded routes (gateway.transcode.openapi), merged into the
gateway's own."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import schemathesis

from gateway.openapi import openapi_document
from gateway.transcode.openapi import merged_document, openapi_path
from gateway.transcode.table import TranscodingTable
from gateway.transcode.template import parse_template
from tests.support.library_protos import library_table

OWN = openapi_document("0.0.0")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return merged_document(copy.deepcopy(OWN), library_table())


def test_the_gateways_own_document_is_kept_as_it_is(document: dict[str, Any]) -> None:
    for path, operations in OWN["paths"].items():
        assert document["paths"][path] == operations
    for name, schema in OWN["components"]["schemas"].items():
        assert document["components"]["schemas"][name] == schema
    assert document["info"] == OWN["info"]
    assert document["components"]["securitySchemes"] == OWN["components"]["securitySchemes"]


def test_without_routes_the_document_is_the_gateways_own() -> None:
    merged = merged_document(copy.deepcopy(OWN), TranscodingTable())
    assert merged["paths"] == OWN["paths"]


def test_every_operation_is_valid_openapi(document: dict[str, Any]) -> None:
    operations = list(schemathesis.openapi.from_dict(document).get_all_operations())
    failed = [repr(o.err()) for o in operations if type(o).__name__ == "Err"]
    assert failed == []
    ids = [op.get("operationId") for ops in document["paths"].values() for op in ops.values()]
    ids = [i for i in ids if i]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/tasks/{id}", "/v1/tasks/{id}"),
        ("/v1/tasks/{task.id}", "/v1/tasks/{task.id}"),
        ("/v1/tasks/{id}:complete", "/v1/tasks/{id}:complete"),
        ("/v1/{name=shelves/*/books/*}", "/v1/{name}"),
        ("/v1/*/books/**", "/v1/{_1}/books/{_3}"),
    ],
)
def test_openapi_path(template: str, path: str) -> None:
    assert openapi_path(parse_template(template)) == path


def test_rule_paths_and_rpc_paths(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert set(paths["/v1/books/{name}"]) == {"get", "head"}
    assert set(paths["/v1/{name}"]) == {"get", "patch"}
    assert paths["/v1/{name}:archive"]["post"]["operationId"] == "demo.v1.Library.Archive"
    assert paths["/v1/books/{name}"]["get"]["operationId"] == "demo.v1.Library.GetBook_2"
    plain = paths["/demo.v1.Library/Plain"]["post"]
    assert plain["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/demo.v1.GetBookRequest"
    }
    assert plain["security"] == [{"bearer": []}]
    assert "/demo.v1.Library/Upload" not in paths  # client streaming: not offered


def test_a_later_path_takes_the_parameter_names_of_an_equivalent_earlier_one(
    document: dict[str, Any],
) -> None:
    (parameter, _) = document["paths"]["/v1/{name}"]["patch"]["parameters"]
    assert parameter["name"] == "name"
    assert parameter["description"] == "sets the request field `book.name`"
    assert parameter["schema"]["description"] == "matches `shelves/*/books/*` (`/` included)"


def test_query_parameters_are_the_fields_no_path_or_body_sets(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/v1/shelves/{shelf}/books"]["get"]["parameters"]
    by_name = {p["name"]: p for p in parameters}
    assert by_name["shelf"]["in"] == "path"
    query = {name for name, p in by_name.items() if p["in"] == "query"}
    assert {"page_size", "ids", "colors", "after", "limit", "author.address.city"} <= query
    assert not query & {"shelf", "extra", "labels", "authors", "author"}
    assert by_name["ids"]["schema"] == {
        "type": "array",
        "items": {"type": "string", "pattern": "^-?[0-9]+$", "format": "int64"},
    }
    patch = document["paths"]["/v1/{name}"]["patch"]
    assert [p["name"] for p in patch["parameters"] if p["in"] == "query"] == ["update_mask"]


def test_response_body_and_streams(document: dict[str, Any]) -> None:
    search = document["paths"]["/v1/shelves/{shelf}/books"]["get"]["responses"]["200"]
    assert search["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/demo.v1.Book"},
    }
    watch = document["paths"]["/v1/books:watch"]["get"]["responses"]["200"]["content"]
    assert set(watch) == {"text/event-stream", "application/x-ndjson"}
    errors = document["paths"]["/v1/books:watch"]["get"]["responses"]["default"]
    assert errors["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RpcError"
    }


def test_message_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    book = schemas["demo.v1.Book"]["properties"]
    assert book["pages"]["type"] == "string"
    assert book["color"] == {"$ref": "#/components/schemas/demo.v1.Color"}
    assert book["published_at"] == {"type": "string", "format": "date-time"}
    assert book["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert book["cover"] == {"type": "string", "format": "byte"}
    assert book["author"] == {"$ref": "#/components/schemas/demo.v1.Author"}
    assert schemas["demo.v1.Color"]["anyOf"][0]["enum"] == [
        "COLOR_UNSPECIFIED",
        "COLOR_RED",
        "COLOR_BLUE",
    ]
    query = schemas["demo.v1.Query"]["properties"]
    assert query["limit"] == {"anyOf": [{"type": "integer", "format": "int32"}, {"type": "null"}]}
    assert schemas["RpcError"]["properties"]["error"]["required"] == ["code", "message", "details"]
