"""The compiled routes of a catalog (gateway.transcode.table): which method a request
reaches, in which precedence, and what is left out."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from gateway.errors import NoRoute, NotFound
from gateway.grpc.descriptors import GATEWAY, CallKind, DescriptorSet, ProtoFile, merge
from gateway.transcode.table import Matched, RpcPath, WrongMethod, build_pool, compile_table
from tests.support.library_protos import BACKEND, SERVICE, library_files, library_table


def reached(http_method: str, path: str) -> tuple[str, dict[str, str]]:
    found = library_table().match(http_method, path)
    assert isinstance(found, Matched), found
    return found.endpoint.method, {".".join(k): v for k, v in found.bindings}


@pytest.mark.parametrize(
    ("http_method", "path", "method", "bindings"),
    [
        ("GET", "/v1/shelves/s1/books/b1", "GetBook", {"name": "shelves/s1/books/b1"}),
        ("GET", "/v1/books/b1", "GetBook", {"name": "b1"}),  # additional binding
        ("HEAD", "/v1/books/b1", "Peek", {"name": "b1"}),  # custom method, same template
        ("GET", "/v1/shelves/s1/books", "Search", {"shelf": "s1"}),
        ("PATCH", "/v1/shelves/s1/books/b1", "UpdateBook", {"book.name": "shelves/s1/books/b1"}),
        ("POST", "/v1/shelves/s1/books/b1:archive", "Archive", {"name": "shelves/s1/books/b1"}),
        ("GET", "/v1/books:watch", "Watch", {}),
        ("GET", "/v1/files/a/b/c", "Files", {"name": "a/b/c"}),
        # A literal beats a variable ({name}) and '**' at the same place.
        ("GET", "/v1/books/special", "Special", {}),
        ("GET", "/v1/files/readme", "Special", {}),
        ("GET", "/v1/files/readme/more", "Files", {"name": "readme/more"}),
        ("POST", "/demo.v1.Library/GetBook", "GetBook", {}),  # resolved as an RPC path
    ],
)
def test_match_and_precedence(
    http_method: str, path: str, method: str, bindings: dict[str, str]
) -> None:
    table = library_table()
    found = table.match(http_method, path)
    if isinstance(found, RpcPath):
        found = table.rpc(http_method, found.path)
    assert isinstance(found, Matched)
    assert found.endpoint.method == method
    assert {".".join(k): v for k, v in found.bindings} == bindings
    assert found.endpoint.backend == BACKEND


def test_a_verb_is_part_of_the_last_segment_for_a_template_without_one() -> None:
    # As in http.proto: "b1:archive" is a segment value of /v1/{name=shelves/*/books/*}.
    assert reached("GET", "/v1/shelves/s1/books/b1:archive") == (
        "GetBook",
        {"name": "shelves/s1/books/b1:archive"},
    )


def test_the_method_is_chosen_before_the_template() -> None:
    # /v1/books/special is GET only; PATCH reaches no route there, and the variable
    # templates of /v1/books/{name} are GET and HEAD.
    assert library_table().match("PATCH", "/v1/books/special") == WrongMethod(("GET", "HEAD"))


@pytest.mark.parametrize(
    ("http_method", "path", "allowed"),
    [
        ("DELETE", "/v1/books/b1", ("GET", "HEAD")),
        ("POST", "/v1/shelves/s1/books/b1", ("GET", "PATCH")),
        ("POST", "/v1/books:watch", ("GET",)),
    ],
)
def test_another_method_on_a_route_is_wrong_method(
    http_method: str, path: str, allowed: tuple[str, ...]
) -> None:
    assert library_table().match(http_method, path) == WrongMethod(allowed)


@pytest.mark.parametrize("path", ["/v2/books", "/v1", "/", "/v1/books", "/messages", "/health"])
def test_unknown_and_reserved_paths_match_nothing(path: str) -> None:
    assert library_table().match("GET", path) is None


@pytest.mark.parametrize("http_method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", ["/demo.v1.Library/GetBook", "/other.v1.Secret/Method"])
def test_a_path_of_the_rpc_shape_is_resolved_after_authentication(
    http_method: str, path: str
) -> None:
    # Whether the service exists is not told before the token is checked.
    assert library_table().match(http_method, path) == RpcPath(path)


def test_rpc_resolution() -> None:
    table = library_table()
    found = table.rpc("POST", "/demo.v1.Library/Plain")
    assert isinstance(found, Matched)
    assert (found.endpoint.body, found.endpoint.template, found.endpoint.kind) == (
        "*",
        None,
        CallKind.UNARY,
    )
    assert table.rpc("GET", "/demo.v1.Library/Plain") == WrongMethod(("POST",))
    with pytest.raises(NotFound):
        table.rpc("POST", "/other.v1.Secret/Method")
    with pytest.raises(NotFound):
        table.rpc("POST", "/demo.v1.Library/Nope")


@pytest.mark.parametrize(
    ("name", "kind"), [("Upload", "client-streaming"), ("Chat", "bidirectional")]
)
def test_client_streaming_methods_are_not_offered(name: str, kind: str) -> None:
    with pytest.raises(NoRoute, match=f"is a {kind} method.*call it over gRPC"):
        library_table().rpc("POST", f"/demo.v1.Library/{name}")


def test_server_streaming_is_offered() -> None:
    found = library_table().match("GET", "/v1/books:watch")
    assert isinstance(found, Matched) and found.endpoint.streaming


def test_a_repeated_route_is_left_out_with_a_problem() -> None:
    problems = library_table().problems
    assert (
        f"{SERVICE}/Duplicate: GET /v1/books/special is not used: {SERVICE}/Special has the "
        "same route"
    ) in problems


def test_routes_are_in_precedence_order() -> None:
    texts = [(e.http_method, e.route) for e in library_table().routes]
    assert texts.index(("GET", "/v1/books/special")) < texts.index(("GET", "/v1/books/{name}"))
    assert texts.index(("GET", "/v1/files/readme")) < texts.index(("GET", "/v1/files/{name=**}"))


def test_a_service_routed_without_descriptor_has_no_route() -> None:
    catalog = merge(DescriptorSet(GATEWAY, (), ()), [], {"ghost.v1.Ghost": "ghost"})
    table = compile_table(catalog)
    assert table.routes == () and dict(table.rpcs) == {}
    assert table.match("POST", "/ghost.v1.Ghost/Boo") == RpcPath("/ghost.v1.Ghost/Boo")
    with pytest.raises(NotFound):
        table.rpc("POST", "/ghost.v1.Ghost/Boo")


def test_a_file_that_cannot_be_built_is_left_out_with_its_importers() -> None:
    files = {
        proto.name: proto
        for proto in (descriptor_pb2.FileDescriptorProto.FromString(f) for f in library_files())
    }
    demo = files["demo.proto"]
    broken = {
        name: ProtoFile(name, proto.SerializeToString(), tuple(proto.dependency), BACKEND)
        for name, proto in files.items()
        if name != "google/protobuf/timestamp.proto"
    }
    pool, problems = build_pool(broken)
    assert "file 'demo.proto' is not transcoded: its import " in " ".join(problems)
    assert any("'google/protobuf/timestamp.proto' is not transcoded" in p for p in problems)
    with pytest.raises(KeyError):
        pool.FindFileByName(demo.name)
    pool.FindFileByName("google/api/http.proto")  # the others are built


def test_the_pool_holds_the_backends_messages() -> None:
    pool = library_table().pool
    assert pool.FindMessageTypeByName("demo.v1.Book").fields_by_name["pages"].json_name == "pages"
