"""The CORS answers of the HTTPS port (gateway.transcode.cors) and the methods of a
transcoded path (``TranscodingTable.methods``)."""

from __future__ import annotations

import pytest

from gateway.transcode.cors import (
    MAX_AGE_S,
    REQUEST_HEADERS,
    CorsPolicy,
    allowed_methods,
    preflight,
    response_headers,
)
from tests.support.library_protos import library_table

ORIGIN = "https://app.example"
POLICY = CorsPolicy.of(frozenset({ORIGIN}), ["x-tenant", "x-trace-bin"])


def test_a_preflight_lists_the_paths_methods_and_every_header_pages_send() -> None:
    answer = preflight(
        POLICY, ORIGIN, "PATCH", "Authorization, content-type, x-tenant", ("DELETE", "GET", "PATCH")
    )
    assert (answer.status, answer.text) == (200, "OK")
    assert dict(answer.headers) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-methods": "DELETE, GET, PATCH",
        "access-control-allow-headers": ", ".join(sorted(REQUEST_HEADERS | POLICY.headers)),
        "access-control-max-age": str(MAX_AGE_S),
        "vary": "Origin",
    }
    allowed = dict(answer.headers)["access-control-allow-headers"].split(", ")
    for name in ("authorization", "content-type", "idempotency-key", "traceparent", "tracestate"):
        assert name in allowed
    assert {"x-tenant", "x-trace-bin"} <= set(allowed)


@pytest.mark.parametrize(
    ("origin", "method", "asked", "text"),
    [
        ("https://evil.example", "GET", "", "Disallowed CORS origin"),
        ("null", "GET", "", "Disallowed CORS origin"),
        ("https://app.example.evil", "GET", "", "Disallowed CORS origin"),
        (ORIGIN, "PUT", "", "Disallowed CORS method"),
        (ORIGIN, "GET", "x-evil", "Disallowed CORS headers"),
        (ORIGIN, "PUT", "cookie", "Disallowed CORS method, headers"),
    ],
)
def test_a_preflight_that_asks_too_much_is_400(
    origin: str, method: str, asked: str, text: str
) -> None:
    answer = preflight(POLICY, origin, method, asked, ("GET", "PATCH"))
    assert (answer.status, answer.text) == (400, text)


def test_a_disallowed_origin_gets_no_cors_header() -> None:
    answer = preflight(POLICY, "https://evil.example", "GET", "authorization", ("GET",))
    assert answer.headers == (("vary", "Origin"),)
    assert response_headers(POLICY, "https://evil.example", ["grpc-metadata-x"]) == (
        ("vary", "Origin"),
    )


def test_a_path_without_routes_offers_no_method() -> None:
    answer = preflight(POLICY, ORIGIN, "GET", "", ())
    assert (answer.status, answer.text) == (400, "Disallowed CORS method")
    assert "access-control-allow-methods" not in dict(answer.headers)


def test_origins_compare_without_case_or_trailing_slash() -> None:
    assert preflight(POLICY, "HTTPS://APP.example/", "GET", "", ("GET",)).status == 200


def test_a_rules_any_method_is_every_method() -> None:
    assert allowed_methods(("*", "GET", "HEAD")) == (
        "DELETE",
        "GET",
        "HEAD",
        "PATCH",
        "POST",
        "PUT",
    )


def test_an_answer_exposes_retry_after_and_the_backends_metadata() -> None:
    names = ["content-type", "Retry-After", "grpc-metadata-x-note", "grpc-trailer-x-end"]
    assert response_headers(POLICY, ORIGIN, names) == (
        ("access-control-allow-origin", ORIGIN),
        ("vary", "Origin"),
        ("access-control-expose-headers", "grpc-metadata-x-note, grpc-trailer-x-end, retry-after"),
    )
    assert response_headers(POLICY, ORIGIN, ["content-type"]) == (
        ("access-control-allow-origin", ORIGIN),
        ("vary", "Origin"),
    )


def test_without_allowed_origins_the_policy_is_inactive() -> None:
    assert not CorsPolicy.of(frozenset(), ["x-tenant"]).active
    assert POLICY.active


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/shelves/s1/books/b1", ("GET", "PATCH")),
        ("/v1/books/b1", ("GET", "HEAD")),  # additional binding and a custom method
        # As for match: a template without a verb takes "b1:archive" as one segment.
        ("/v1/shelves/s1/books/b1:archive", ("GET", "PATCH", "POST")),
        ("/v1/books:watch", ("GET",)),
        ("/v1/files/a/b", ("GET",)),
        ("/demo.v1.Library/GetBook", ("POST",)),
        ("/no.such.Service/Method", ("POST",)),  # RPC shape: existence stays private
        ("/v1/nothing/here", ()),
    ],
)
def test_the_methods_of_a_transcoded_path(path: str, methods: tuple[str, ...]) -> None:
    assert library_table().methods(path) == methods
