"""google.api.http path templates (gateway.transcode.template): parse, match, rank."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.transcode.template import SegmentKind, TemplateError, parse_template

L, S, M = SegmentKind.LITERAL, SegmentKind.SINGLE, SegmentKind.MULTI


@pytest.mark.parametrize(
    ("text", "kinds", "variables", "verb"),
    [
        ("/v1/tasks", [L, L], [], ""),
        ("/v1/tasks/{id}", [L, L, S], [("id", 2, 3)], ""),
        ("/v1/tasks/{task.id}", [L, L, S], [("task.id", 2, 3)], ""),
        ("/v1/{name=projects/*/tasks/*}", [L, L, S, L, S], [("name", 1, 5)], ""),
        ("/v1/{name=**}", [L, M], [("name", 1, 2)], ""),
        ("/v1/*/tasks/**", [L, S, L, M], [], ""),
        ("/v1/tasks/{id}:complete", [L, L, S], [("id", 2, 3)], "complete"),
        ("/v1/tasks:watch", [L, L], [], "watch"),
        (
            "/v1/{name=shelves/*}/books/{book}",
            [L, L, S, L, S],
            [("name", 1, 3), ("book", 4, 5)],
            "",
        ),
    ],
)
def test_parse(
    text: str, kinds: list[SegmentKind], variables: list[tuple[str, int, int]], verb: str
) -> None:
    template = parse_template(text)
    assert [s.kind for s in template.segments] == kinds
    assert [(v.name, v.start, v.end) for v in template.variables] == variables
    assert template.verb == verb
    assert template.text == text


def test_literal_segments_are_percent_decoded() -> None:
    assert parse_template("/v1/a%20b").segments[1].literal == "a b"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("v1/tasks", "must start with '/'"),
        ("/", "empty segment"),
        ("/v1//tasks", "empty segment"),
        ("/v1/tasks/", "empty segment"),
        ("/v1/{id", "'{' without '}'"),
        ("/v1/id}", "'}' without '{'"),
        ("/v1/{a={b}}", "cannot be nested"),
        ("/v1/**/tasks", "'**' must be the last segment"),
        ("/v1/{name=**}/x", "'**' must be the last segment"),
        ("/v1/{id}/{id}", "binds 'id' twice"),
        ("/v1/{task}/{task.id}", "binds both 'task' and 'task.id'"),
        ("/v1/ta*sks", "not a literal segment"),
        ("/v1/x{id}", "not a literal segment"),
        ("/v1/{1id}", "not a field path"),
        ("/v1/{a..b}", "not a field path"),
        ("/v1/{id=}", "empty pattern"),
        ("/v1/tasks:", "verb '' is not a literal"),
        ("/v1/tasks:a/b", "'tasks:a' is not a literal segment"),
        ("/v1/a=b", "not a literal segment"),
        ("/v1/%ff", "not valid percent-encoding"),
    ],
)
def test_bad_templates_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template(text)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("text", "path", "bindings"),
    [
        ("/v1/tasks", "/v1/tasks", {}),
        ("/v1/tasks/{id}", "/v1/tasks/42", {"id": "42"}),
        ("/v1/tasks/{task.id}", "/v1/tasks/42", {"task.id": "42"}),
        ("/v1/tasks/{id}", "/v1/tasks/a%2Fb%20c", {"id": "a/b c"}),
        ("/v1/tasks/{id}", "/v1/tasks/a:b", {"id": "a:b"}),
        ("/v1/tasks/{id}:complete", "/v1/tasks/42:complete", {"id": "42"}),
        ("/v1/tasks/{id}:complete", "/v1/tasks/a:b:complete", {"id": "a:b"}),
        ("/v1/{name=projects/*/tasks/*}", "/v1/projects/p/tasks/t", {"name": "projects/p/tasks/t"}),
        # Several segments: decoded, but an encoded slash stays encoded (RFC 6570).
        (
            "/v1/{name=projects/*/tasks/*}",
            "/v1/projects/a%2Fb/tasks/c%20d",
            {"name": "projects/a%2Fb/tasks/c d"},
        ),
        ("/v1/{name=**}", "/v1/a/b/c", {"name": "a/b/c"}),
        ("/v1/{name=**}", "/v1", {"name": ""}),
        ("/v1/*/tasks", "/v1/anything/tasks", {}),
        ("/v1/tasks:watch", "/v1/tasks:watch", {}),
        ("/v1/t%20s", "/v1/t%20s", {}),
        ("/v1/t%20s", "/v1/t s", {}),
    ],
)
def test_match(text: str, path: str, bindings: dict[str, str]) -> None:
    found = parse_template(text).match(path)
    assert found is not None
    assert {".".join(k): v for k, v in found} == bindings


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("/v1/tasks", "/v1/tasks/1"),
        ("/v1/tasks", "/v1/task"),
        ("/v1/tasks", "v1/tasks"),
        ("/v1/tasks/{id}", "/v1/tasks"),
        ("/v1/tasks/{id}", "/v1/tasks/"),  # a variable is never empty
        ("/v1/tasks/{id}", "/v1/tasks/1/2"),
        ("/v1/tasks/{id}", "/v1/tasks:watch"),
        ("/v1/tasks/{id}:complete", "/v1/tasks/1"),
        ("/v1/tasks/{id}:complete", "/v1/tasks/1:undo"),
        ("/v1/tasks/{id}:complete", "/v1/tasks/:complete"),
        ("/v1/tasks:watch", "/v1/tasks"),
        ("/v1/tasks", "/v1/tasks:watch"),
        ("/v1/{name=projects/*/tasks/*}", "/v1/projects/p/tasks"),
        ("/v1/{name=projects/*/tasks/*}", "/v1/folders/p/tasks/t"),
        ("/v1/tasks/{id}", "/v1/tasks/%ff"),  # not UTF-8
    ],
)
def test_no_match(text: str, path: str) -> None:
    assert parse_template(text).match(path) is None


def test_rank_orders_literals_before_wildcards_left_to_right_then_verbs() -> None:
    texts = [
        "/v1/{name=**}",
        "/v1/*/b",
        "/v1/a/{id}",
        "/v1/a/b",
        "/v1/a:verb",
        "/v1/a",
    ]
    ranked = sorted(texts, key=lambda t: parse_template(t).rank)
    assert ranked == ["/v1/a:verb", "/v1/a", "/v1/a/b", "/v1/a/{id}", "/v1/*/b", "/v1/{name=**}"]


SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)
LITERAL = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True)


@given(st.lists(LITERAL, min_size=1, max_size=5), SEGMENT)
def test_a_single_segment_variable_round_trips_any_text(literals: list[str], value: str) -> None:
    template = parse_template("/" + "/".join(literals) + "/{field}")
    path = "/" + "/".join(literals) + "/" + quote(value, safe="")
    assert template.match(path) == ((("field",), value),)


@given(st.lists(LITERAL, min_size=1, max_size=5), st.lists(SEGMENT, min_size=1, max_size=4))
def test_a_rest_variable_keeps_encoded_slashes(literals: list[str], values: list[str]) -> None:
    template = parse_template("/" + "/".join(literals) + "/{rest=**}")
    path = "/" + "/".join([*literals, *(quote(v, safe="") for v in values)])
    expected = "/".join(v.replace("/", "%2F") for v in values)
    assert template.match(path) == ((("rest",), expected),)
