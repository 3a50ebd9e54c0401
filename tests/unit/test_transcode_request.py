"""An HTTP request → its gRPC request message (gateway.transcode.request): the body, then
the path, then the query, in the proto3 JSON mapping."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidMessage, MessageTooLarge
from gateway.transcode.request import build_request
from gateway.transcode.table import Matched, RpcPath
from tests.support.library_protos import library_table

MAX_BYTES = 4096
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def build(
    http_method: str, path: str, query: list[tuple[str, str]] | None = None, body: Any = None
) -> dict[str, Any]:
    table = library_table()
    found = table.match(http_method, path)
    if isinstance(found, RpcPath):
        found = table.rpc(http_method, found.path)
    assert isinstance(found, Matched), found
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    message = build_request(
        found.endpoint.request_type,
        found.endpoint.body,
        found.bindings,
        query or [],
        raw,
        max_bytes=MAX_BYTES,
        max_depth=8,
        pool=table.pool,
    )
    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data


SEARCH = "/v1/shelves/s1/books"


def test_path_and_every_kind_of_query_parameter() -> None:
    query = [
        ("page_size", "10"),
        ("ids", "1"),
        ("ids", "9007199254740993"),  # past a double's precision: 64-bit integers are text
        ("color", "COLOR_RED"),
        ("colors", "COLOR_RED"),
        ("colors", "2"),  # an enum by number
        ("flag", "true"),
        ("ratio", "1.5"),
        ("blob", "aGk="),
        ("after", "2026-01-01T00:00:00Z"),
        ("within", "1.5s"),
        ("mask", "title,author.displayName"),
        ("limit", "5"),  # google.protobuf.Int32Value
        ("archived", "false"),  # google.protobuf.BoolValue
        ("author.display_name", "Ann"),
        ("author.address.city", "Oslo"),
        ("by_name", "x"),
    ]
    assert build("GET", SEARCH, query) == {
        "shelf": "s1",
        "page_size": 10,
        "ids": ["1", "9007199254740993"],
        "color": "COLOR_RED",
        "colors": ["COLOR_RED", "COLOR_BLUE"],
        "flag": True,
        "ratio": 1.5,
        "blob": "aGk=",
        "after": "2026-01-01T00:00:00Z",
        "within": "1.500s",
        "mask": "title,author.displayName",
        "limit": 5,
        "archived": False,
        "author": {"display_name": "Ann", "address": {"city": "Oslo"}},
        "by_name": "x",
    }


def test_query_parameters_may_use_lower_camel_names() -> None:
    query = [("pageSize", "3"), ("author.displayName", "Bo")]
    assert build("GET", SEARCH, query) == {
        "shelf": "s1",
        "page_size": 3,
        "author": {"display_name": "Bo"},
    }


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ([("bogus", "1")], "unknown query parameter 'bogus'"),
        ([("author.nope", "1")], "unknown query parameter 'author.nope'"),
        ([("author", "x")], "names a message field"),
        ([("extra", "{}")], "names a message field"),
        ([("labels", "a")], "names a message field"),
        ([("authors.id", "a")], "'authors' is not a singular message field"),
        ([("page_size", "1"), ("page_size", "2")], "'page_size' is not repeated"),
        ([("flag", "yes")], "'flag' must be true or false"),
        ([("page_size", "ten")], "invalid request: "),
        ([("color", "COLOR_PINK")], "invalid request: "),
        ([("after", "yesterday")], "invalid request: "),
        ([("shelf", "s2")], "'shelf' is already set by the path"),
        ([("by_name", "x"), ("by_number", "1")], "invalid request: "),
    ],
)
def test_bad_query_parameters_are_invalid(query: list[tuple[str, str]], why: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        build("GET", SEARCH, query)
    assert why in caught.value.message


def test_a_body_field_with_a_path_variable_inside_it() -> None:
    # PATCH /v1/{book.name=shelves/*/books/*} with body "book": the path wins.
    body = {"name": "elsewhere", "title": "T", "author": {"displayName": "Z"}, "pages": "12"}
    assert build("PATCH", "/v1/shelves/s/books/b", [("update_mask", "title")], body) == {
        "book": {
            "name": "shelves/s/books/b",
            "title": "T",
            "author": {"display_name": "Z"},
            "pages": "12",
        },
        "update_mask": "title",
    }


def test_a_query_parameter_may_not_reach_into_the_body_field() -> None:
    with pytest.raises(InvalidMessage, match="belongs in the request body"):
        build("PATCH", "/v1/shelves/s/books/b", [("book.title", "x")], {})


def test_a_whole_body_takes_no_query_parameter() -> None:
    assert build("POST", "/v1/shelves/s/books/b:archive", None, {}) == {"name": "shelves/s/books/b"}
    with pytest.raises(InvalidMessage, match="the body carries the request"):
        build("POST", "/v1/shelves/s/books/b:archive", [("name", "x")], {})


def test_the_rpc_path_takes_the_whole_request_as_its_body() -> None:
    body = {"shelf": "s", "ids": [1, "2"], "pageSize": 4, "after": None}
    assert build("POST", "/demo.v1.Library/Search", None, body) == {
        "shelf": "s",
        "ids": ["1", "2"],
        "page_size": 4,
    }


@pytest.mark.parametrize(
    ("path", "body", "error", "why"),
    [
        ("/v1/books/b1", {"name": "x"}, InvalidMessage, "this method takes no request body"),
        ("/demo.v1.Library/Search", [1], InvalidMessage, "must be a JSON object"),
        ("/demo.v1.Library/Search", b"{", InvalidMessage, "malformed JSON"),
        ("/demo.v1.Library/Search", {"nope": 1}, InvalidMessage, "invalid request: "),
        ("/demo.v1.Library/Search", {"page_size": "x"}, InvalidMessage, "invalid request: "),
        ("/demo.v1.Library/Search", b"[" * 20 + b"]" * 20, InvalidMessage, "nested deeper"),
        (
            "/demo.v1.Library/Search",
            b"{" + b" " * MAX_BYTES + b"}",
            MessageTooLarge,
            "the limit is",
        ),
    ],
)
def test_bad_bodies(path: str, body: Any, error: type[Exception], why: str) -> None:
    method = "GET" if path.startswith("/v1/") else "POST"
    with pytest.raises(error) as caught:
        build(method, path, None, body)
    assert why in str(caught.value)


def test_an_empty_body_is_an_empty_object() -> None:
    assert build("GET", "/v1/books/b1", None, b"  \n") == {"name": "b1"}
    assert build("POST", "/demo.v1.Library/Search", None, b"") == {}


@given(st.text(min_size=1, max_size=40), st.lists(INT64, max_size=5))
def test_path_and_query_values_round_trip(shelf: str, ids: list[int]) -> None:
    path = f"/v1/shelves/{quote(shelf, safe='')}/books"
    query = [("ids", str(i)) for i in ids]
    built = build("GET", path, query)
    assert built["shelf"] == shelf
    assert [int(i) for i in built.get("ids", [])] == ids


@given(st.text(max_size=60), INT64)
def test_body_values_round_trip(title: str, pages: int) -> None:
    built = build("PATCH", "/v1/shelves/s/books/b", None, {"title": title, "pages": pages})
    assert built["book"].get("title", "") == title
    assert int(built["book"].get("pages", 0)) == pages
