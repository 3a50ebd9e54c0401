"""A back-end's response metadata → ``Grpc-Metadata-*``/``Grpc-Trailer-*`` headers
(gateway.transcode.metadata): the allowlist, what never passes, ``-bin`` values, the bounds."""

from __future__ import annotations

import ast
import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.transcode.metadata import (
    MAX_ENTRIES,
    MAX_TOTAL_BYTES,
    MAX_VALUE_BYTES,
    ResponseMetadata,
    response_metadata,
)
from tests.unit.test_pure_core import (
    PURE_MODULES,
    _is_module,
    _source_path,
    environment_reads,
    forbidden_imports,
    imported_modules,
)

ALLOWED = frozenset({"x-request-id", "x-tenant", "x-trace-bin", "x-note"})


def test_allowed_headers_and_trailers_pass_with_their_prefixes() -> None:
    headers = (("x-tenant", "acme"), ("x-note", "a"), ("x-note", "b"), ("x-other", "no"))
    trailers = (("x-note", "end"), ("x-trace-bin", b"\x00\xff"), ("x-secret", "no"))
    assert response_metadata(headers, trailers, ALLOWED) == ResponseMetadata(
        (
            ("grpc-metadata-x-tenant", "acme"),
            ("grpc-metadata-x-note", "a"),
            ("grpc-metadata-x-note", "b"),
            ("grpc-trailer-x-note", "end"),
            ("grpc-trailer-x-trace-bin", base64.b64encode(b"\x00\xff").decode()),
        )
    )


@pytest.mark.parametrize(
    "name",
    [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "grpc-encoding",
        ":status",
        "content-type",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "set-cookie",
        "authorization",
        "x-dialog-user",
    ],
)
def test_grpc_http_and_credential_names_never_pass_even_when_allowed(name: str) -> None:
    value = b"v" if name.endswith("-bin") else "v"
    passed = response_metadata(((name, value),), ((name, value),), ALLOWED | {name})
    assert passed == ResponseMetadata()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        ("  padded  ", "padded"),
        ("line\r\nbreak", None),  # header injection
        ("tab\there", None),
        ("caf\u00e9", None),
        (b"bytes", "bytes"),
    ],
)
def test_only_printable_ascii_values_pass(value: str | bytes, expected: str | None) -> None:
    passed = response_metadata((("x-note", value),), (), ALLOWED)
    if expected is None:
        assert passed == ResponseMetadata((), dropped=1)
    else:
        assert passed.headers == (("grpc-metadata-x-note", expected),)


def test_bin_values_are_padded_standard_base64_of_the_bytes() -> None:
    raw = bytes(range(256))
    passed = response_metadata((("x-trace-bin", raw),), (), ALLOWED)
    ((_, text),) = passed.headers
    assert base64.b64decode(text, validate=True) == raw


def test_the_count_is_bounded() -> None:
    many = tuple(("x-note", str(i)) for i in range(MAX_ENTRIES + 5))
    passed = response_metadata(many, (("x-tenant", "t"),), ALLOWED)
    assert [v for _, v in passed.headers] == [str(i) for i in range(MAX_ENTRIES)]
    assert passed.dropped == 6


def test_a_value_too_long_is_dropped_and_the_rest_pass() -> None:
    headers = (("x-note", "x" * (MAX_VALUE_BYTES + 1)), ("x-tenant", "acme"))
    passed = response_metadata(headers, (), ALLOWED)
    assert passed == ResponseMetadata((("grpc-metadata-x-tenant", "acme"),), dropped=1)


def test_the_total_size_is_bounded() -> None:
    value = "v" * (MAX_VALUE_BYTES - 100)
    passed = response_metadata((("x-note", value),) * 3, (), ALLOWED)
    assert len(passed.headers) == 2 and passed.dropped == 1


metadata_entries = st.lists(
    st.tuples(
        st.sampled_from(sorted(ALLOWED | {"grpc-status", "x-other", "content-type"})),
        st.one_of(st.text(max_size=300), st.binary(max_size=300)),
    ),
    max_size=60,
)


@given(metadata_entries, metadata_entries)
def test_whatever_the_backend_sends_the_answer_is_bounded_and_allowed(
    headers: list[tuple[str, str | bytes]], trailers: list[tuple[str, str | bytes]]
) -> None:
    passed = response_metadata(headers, trailers, ALLOWED)
    assert len(passed.headers) <= MAX_ENTRIES
    assert sum(len(k) + len(v) for k, v in passed.headers) <= MAX_TOTAL_BYTES
    for name, value in passed.headers:
        key = name.removeprefix("grpc-metadata-").removeprefix("grpc-trailer-")
        assert key != name and key in ALLOWED
        assert all(" " <= c <= "~" for c in value)


# The core modules of the response metadata and of CORS, and the origin rules they use
# (gateway.origins imports nothing): pure, like those of tests/unit/test_pure_core.py.
CORE = ("gateway.transcode.metadata", "gateway.transcode.cors", "gateway.origins")


@pytest.mark.parametrize("module", CORE)
def test_the_metadata_and_cors_core_is_pure(module: str) -> None:
    tree = ast.parse(_source_path(module).read_text())
    assert forbidden_imports(module, tree) == set()
    assert environment_reads(tree) == []
    allowed = {*PURE_MODULES, *CORE, "gateway"}
    project = {
        name
        for name in imported_modules(module, tree)
        if name.split(".")[0] == "gateway" and _is_module(name)
    }
    assert project <= allowed, f"{module} imports shell modules: {sorted(project - allowed)}"
