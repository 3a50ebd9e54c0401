"""The google.api.http rules of a method (gateway.transcode.rules), read from the options
of descriptors built from a back-end's files (tests/support/library_protos.py)."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor

from gateway.transcode.rules import ANY_METHOD, RuleError, binding, http_rule, method_rules
from tests.support.library_protos import SERVICE, library_table


def method(name: str) -> MethodDescriptor:
    return library_table().pool.FindServiceByName(SERVICE).methods_by_name[name]


def described(name: str) -> list[tuple[str, str, str, str]]:
    return [
        (b.http_method, b.template.text, b.body, b.response_body)
        for b in method_rules(method(name)).bindings
    ]


@pytest.mark.parametrize(
    ("name", "bindings"),
    [
        (
            "GetBook",
            [
                ("GET", "/v1/{name=shelves/*/books/*}", "", ""),
                ("GET", "/v1/books/{name}", "", ""),  # an additional binding
            ],
        ),
        ("Search", [("GET", "/v1/shelves/{shelf}/books", "", "books")]),
        ("UpdateBook", [("PATCH", "/v1/{book.name=shelves/*/books/*}", "book", "")]),
        ("Archive", [("POST", "/v1/{name=shelves/*/books/*}:archive", "*", "")]),
        ("Files", [("GET", "/v1/files/{name=**}", "", "")]),
        ("Peek", [("HEAD", "/v1/books/{name}", "", "")]),  # custom
        ("Watch", [("GET", "/v1/books:watch", "", "")]),
        ("Plain", []),  # no annotation: only the RPC path
    ],
)
def test_rules_become_bindings(name: str, bindings: list[tuple[str, str, str, str]]) -> None:
    assert described(name) == bindings
    assert method_rules(method(name)).problems == ()


def test_a_method_without_annotation_has_no_rule() -> None:
    assert http_rule(method("Plain")) is None
    assert http_rule(method("GetBook")) is not None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("BadTemplate", "'{' without '}'"),
        ("BadField", "path variable 'missing': demo.v1.GetBookRequest has no field 'missing'"),
        ("BadBody", "body 'nope' is not a field of demo.v1.GetBookRequest"),
        ("GetWithBody", "a GET binding has no body"),
        ("MessageVariable", "path variable 'book' is not a singular scalar field"),
        ("NoPattern", "the rule names no HTTP method"),
    ],
)
def test_a_broken_rule_is_left_out_with_a_problem(name: str, why: str) -> None:
    rules = method_rules(method(name))
    assert rules.bindings == ()
    (problem,) = rules.problems
    assert problem.startswith(f"{SERVICE}/{name}: its rule is not used: ")
    assert why in problem


def rule(**fields: object) -> http_pb2.HttpRule:
    return http_pb2.HttpRule(**fields)


@pytest.mark.parametrize(
    ("made", "why"),
    [
        (rule(get="/v1/books/{name}", response_body="nope"), "response_body 'nope'"),
        (rule(custom=http_pb2.CustomHttpPattern(kind="GE T", path="/v1/x")), "not an HTTP method"),
        (rule(get="/v1/books/{name.first}"), "'name' is not a singular message field"),
        (rule(get="/v1/books/{}"), "not a field path"),
    ],
)
def test_binding_checks(made: http_pb2.HttpRule, why: str) -> None:
    with pytest.raises(RuleError) as caught:
        binding(made, method("GetBook"), additional=False)
    assert why in str(caught.value)


def test_a_custom_star_leaves_the_method_open() -> None:
    made = rule(custom=http_pb2.CustomHttpPattern(kind="*", path="/v1/any/{name}"))
    assert binding(made, method("GetBook"), additional=False).http_method == ANY_METHOD


def test_additional_bindings_are_one_level_deep() -> None:
    nested = rule(get="/v1/a/{name}", additional_bindings=[rule(get="/v1/b/{name}")])
    with pytest.raises(RuleError, match="cannot have additional bindings"):
        binding(nested, method("GetBook"), additional=True)


def test_the_http_option_is_read_from_the_descriptor_pool_of_the_backend() -> None:
    options = method("Search").GetOptions()
    assert options.HasExtension(annotations_pb2.http)
    assert options.Extensions[annotations_pb2.http].response_body == "books"
