"""A back-end's answer → JSON, and its gRPC status → the one JSON error
(gateway.transcode.response, gateway.errors.GRPC_HTTP_STATUS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, message_factory
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import (
    GRPC_HTTP_STATUS,
    BackendFailed,
    OutOfOrder,
    RateLimited,
    http_status_of,
)
from gateway.transcode.response import (
    DETAILS_TRAILER,
    decode_response,
    error_json,
    message_json,
    status_json,
)
from tests.support.library_protos import library_table

ROOT = Path(__file__).resolve().parents[2]


def demo(type_name: str, **fields: Any) -> Any:
    descriptor = library_table().pool.FindMessageTypeByName(f"demo.v1.{type_name}")
    return message_factory.GetMessageClass(descriptor)(**fields)


def test_a_response_in_the_gateways_json_mapping() -> None:
    book = demo("Book", name="b", pages=2**53 + 1, color=2, tags=["x"])
    book.published_at.FromJsonString("2026-01-02T03:04:05Z")
    raw = book.SerializeToString()
    decoded = decode_response(raw, book.DESCRIPTOR)
    assert message_json(decoded) == {
        "name": "b",
        "pages": "9007199254740993",  # 64-bit integers are strings
        "color": "COLOR_BLUE",  # enums by name
        "tags": ["x"],
        "published_at": "2026-01-02T03:04:05Z",  # proto field names; defaults left out
    }


def test_an_unknown_enum_number_stays_a_number() -> None:
    assert message_json(demo("Book", color=7)) == {"color": 7}


def test_response_body_selects_one_field_even_at_its_default() -> None:
    reply = demo("QueryReply", next="n")
    reply.books.add(name="a")
    assert message_json(reply, "books") == [{"name": "a"}]
    assert message_json(demo("QueryReply"), "books") == []
    assert message_json(demo("QueryReply"), "next") == ""
    assert message_json(demo("Book"), "author") is None


def test_an_answer_that_is_not_the_message_is_a_backend_failure() -> None:
    with pytest.raises(BackendFailed, match="could not be decoded"):
        decode_response(b"\xff\xff\xff", demo("Book").DESCRIPTOR)


def packed(message: Any) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def test_a_status_with_details_in_the_one_error_shape() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="title")]
    )
    unknown = any_pb2.Any(type_url="type.googleapis.com/other.v1.Secret", value=b"\x01\x02")
    status = status_pb2.Status(
        code=3, message="bad", details=[packed(bad), packed(demo("Book", name="b")), unknown]
    )
    trailers = [("x-other", "1"), (DETAILS_TRAILER, status.SerializeToString())]
    http, body = status_json("INVALID_ARGUMENT", "bad title", trailers, library_table().pool)
    assert http == 400
    assert body == {
        "error": {
            "code": "invalid_argument",
            "message": "bad title",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "field_violations": [{"field": "title"}],
                },
                # A type of the back-end's own, read with its descriptors.
                {"@type": "type.googleapis.com/demo.v1.Book", "name": "b"},
                # A type nobody described: its bytes.
                {"@type": "type.googleapis.com/other.v1.Secret", "value": "AQI="},
            ],
        }
    }


@pytest.mark.parametrize("raw", [b"", b"\xff\xff", "text"])
def test_missing_or_malformed_details_are_none(raw: bytes | str) -> None:
    http, body = status_json("NOT_FOUND", "task 7 not found", [(DETAILS_TRAILER, raw)])
    assert http == 404
    assert body == {"error": {"code": "not_found", "message": "task 7 not found", "details": []}}


def test_every_grpc_status_has_an_http_status() -> None:
    assert set(GRPC_HTTP_STATUS) == {code.name for code in grpc.StatusCode}
    assert http_status_of("NOT_A_STATUS") == 500


@pytest.mark.parametrize(
    ("code", "http"),
    [
        ("INVALID_ARGUMENT", 400),
        ("FAILED_PRECONDITION", 400),
        ("OUT_OF_RANGE", 400),
        ("UNAUTHENTICATED", 401),
        ("PERMISSION_DENIED", 403),
        ("NOT_FOUND", 404),
        ("ALREADY_EXISTS", 409),
        ("ABORTED", 409),
        ("RESOURCE_EXHAUSTED", 429),
        ("CANCELLED", 499),
        ("UNKNOWN", 500),
        ("INTERNAL", 500),
        ("DATA_LOSS", 500),
        ("UNIMPLEMENTED", 501),
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
    ],
)
def test_the_http_status_of_a_backends_status(code: str, http: int) -> None:
    assert http_status_of(code) == http
    assert status_json(code, "m")[0] == http


def test_the_gateways_own_errors_take_the_same_shape() -> None:
    assert error_json(RateLimited("slow down")) == {
        "error": {"code": "rate_limited", "message": "slow down", "details": []}
    }
    assert error_json(OutOfOrder.expecting("e", 3))["error"]["expected_seq"] == 3  # type: ignore[index]


def test_the_mesh_doc_prints_the_status_table() -> None:
    doc = (ROOT / "docs" / "mesh.md").read_text()
    for code, http in GRPC_HTTP_STATUS.items():
        row = f"| `{code}` | `{code.lower()}` | {http} |"
        assert row in doc, f"docs/mesh.md is missing or has a stale row: {row}"
