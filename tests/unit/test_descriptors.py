"""The merged descriptor pool of the public gRPC port (gateway.grpc.descriptors): who serves
what, conflicts between back-ends, and the lookups reflection answers from."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st

from gateway.grpc.descriptors import GATEWAY, CallKind, DescriptorSet, ProtoFile, merge

Field = descriptor_pb2.FieldDescriptorProto
# (method, client streaming, server streaming)
Method = tuple[str, bool, bool]


def proto_file(
    name: str,
    package: str,
    *,
    messages: Sequence[str] = (),
    services: dict[str, Sequence[Method]] | None = None,
    deps: Sequence[str] = (),
    comment: str = "",
) -> descriptor_pb2.FileDescriptorProto:
    """A file whose messages each have one string field ``text``; every method takes and
    returns the file's first message."""
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, dependency=deps)
    for message in messages:
        proto.message_type.add(name=message).field.add(
            name="text", number=1, type=Field.TYPE_STRING, label=Field.LABEL_OPTIONAL
        )
    for service, methods in (services or {}).items():
        added = proto.service.add(name=service)
        for method, client_streaming, server_streaming in methods:
            added.method.add(
                name=method,
                input_type=f".{package}.{messages[0]}",
                output_type=f".{package}.{messages[0]}",
                client_streaming=client_streaming,
                server_streaming=server_streaming,
            )
    if comment:
        proto.source_code_info.location.add(leading_comments=comment)
    return proto


def source(
    name: str, services: Sequence[str], *files: descriptor_pb2.FileDescriptorProto
) -> DescriptorSet:
    return DescriptorSet(name, tuple(services), tuple(f.SerializeToString() for f in files))


COMMON = proto_file("common/v1/common.proto", "common.v1", messages=["Note"])
OWN_FILE = proto_file(
    "gw/v1/gw.proto", "gw.v1", messages=["Ping"], services={"Gw": [("Send", False, True)]}
)
OWN = source(GATEWAY, ["gw.v1.Gw"], OWN_FILE)
TASKS = proto_file(
    "tasks/v1/tasks.proto",
    "tasks.v1",
    messages=["Task"],
    services={
        "Tasks": [
            ("Create", False, False),
            ("Upload", True, False),
            ("Watch", False, True),
            ("Sync", True, True),
        ]
    },
    deps=["common/v1/common.proto"],
)
NOTES = proto_file(
    "notes/v1/notes.proto",
    "notes.v1",
    messages=["Entry"],
    services={"Notes": [("Add", False, False)]},
    deps=["common/v1/common.proto"],
)


def names(found: Sequence[ProtoFile]) -> list[str]:
    return [f.name for f in found]


def test_the_gateways_own_services_come_first_then_each_backends() -> None:
    catalog = merge(
        OWN,
        [
            source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON),
            source("notes", ["notes.v1.Notes"], NOTES, COMMON),
        ],
    )
    assert catalog.services == ("gw.v1.Gw", "notes.v1.Notes", "tasks.v1.Tasks")
    assert catalog.routes == {"tasks.v1.Tasks": "tasks", "notes.v1.Notes": "notes"}
    assert catalog.backend_of("gw.v1.Gw") is None  # the gateway's own: not proxied
    assert catalog.conflicts == ()
    assert catalog.files["common/v1/common.proto"].owner == "tasks"


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("Create", CallKind.UNARY),
        ("Upload", CallKind.CLIENT_STREAM),
        ("Watch", CallKind.SERVER_STREAM),
        ("Sync", CallKind.BIDI_STREAM),
    ],
)
def test_the_kind_of_each_method_comes_from_its_descriptor(method: str, kind: CallKind) -> None:
    catalog = merge(OWN, [source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON)])
    assert catalog.kind_of("tasks.v1.Tasks", method) is kind
    assert catalog.kind_of("tasks.v1.Tasks", "Nope") is None


def test_a_file_shared_with_the_same_content_is_merged_once() -> None:
    with_comment = proto_file(
        "common/v1/common.proto", "common.v1", messages=["Note"], comment="only the docs differ"
    )
    catalog = merge(
        source(GATEWAY, ["gw.v1.Gw"], OWN_FILE, COMMON),
        [source("tasks", ["tasks.v1.Tasks"], TASKS, with_comment)],
    )
    assert catalog.conflicts == ()
    assert catalog.files["common/v1/common.proto"].owner == GATEWAY
    assert catalog.backend_of("tasks.v1.Tasks") == "tasks"


# (case, back-ends in order, configured services, the conflict's back-end, its reason)
CONFLICTS = [
    (
        "a service two back-ends list: the first keeps it",
        [
            source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON),
            source("copy", ["tasks.v1.Tasks"], TASKS, COMMON),
        ],
        {},
        "copy",
        "service 'tasks.v1.Tasks' belongs to back-end 'tasks'",
    ),
    (
        "a service routes.json gives to another back-end",
        [source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON)],
        {"tasks.v1.Tasks": "other"},
        "tasks",
        "service 'tasks.v1.Tasks' belongs to back-end 'other'",
    ),
    (
        "a file of the same name with other content",
        [
            source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON),
            source(
                "notes",
                ["notes.v1.Notes"],
                NOTES,
                proto_file("common/v1/common.proto", "common.v1", messages=["Note", "Other"]),
            ),
        ],
        {},
        "notes",
        "file 'common/v1/common.proto' differs from the one merged from back-end 'tasks'",
    ),
    (
        "a file that differs from the gateway's own",
        [source("gw", ["other.v1.Svc"], proto_file("gw/v1/gw.proto", "gw.v1", messages=["X"]))],
        {},
        "gw",
        "file 'gw/v1/gw.proto' differs from the one merged from the gateway",
    ),
    (
        "a symbol another file defines",
        [
            source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON),
            source(
                "clash",
                [],
                proto_file("clash/v1/common.proto", "common.v1", messages=["Note"]),
            ),
        ],
        {},
        "clash",
        "symbol 'common.v1.Note' is also defined in 'common/v1/common.proto'",
    ),
    (
        "a malformed file descriptor",
        [DescriptorSet("bad", ("bad.v1.Bad",), (b"\xff\xff\xff",))],
        {},
        "bad",
        "a file descriptor is malformed",
    ),
]


@pytest.mark.parametrize(
    ("backends", "configured", "backend", "reason"),
    [case[1:] for case in CONFLICTS],
    ids=[case[0] for case in CONFLICTS],
)
def test_a_conflicting_backend_is_not_merged(
    backends: list[DescriptorSet], configured: dict[str, str], backend: str, reason: str
) -> None:
    catalog = merge(OWN, backends, configured)
    [conflict] = catalog.conflicts
    assert (conflict.backend, conflict.reason) == (backend, reason)
    assert str(conflict) == f"back-end {backend!r} is not merged into reflection: {reason}"
    assert backend not in {f.owner for f in catalog.files.values()}
    assert backend not in catalog.routes.values()


def test_reserved_services_are_never_a_backends() -> None:
    listed = [
        "dialog.backend.v1.Backend",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "dialog.v1.Gateway",
        "tasks.v1.Tasks",
    ]
    catalog = merge(
        OWN,
        [source("tasks", listed, TASKS, COMMON), source("notes", listed[:4], NOTES, COMMON)],
    )
    assert catalog.conflicts == ()
    assert catalog.routes == {"tasks.v1.Tasks": "tasks"}


def test_a_configured_service_without_a_descriptor_is_routed_but_not_listed() -> None:
    catalog = merge(OWN, [], {"dark.v1.Dark": "dark"})
    assert catalog.backend_of("dark.v1.Dark") == "dark"
    assert "dark.v1.Dark" not in catalog.services
    assert catalog.kind_of("dark.v1.Dark", "Call") is None


def test_a_conflicting_backend_keeps_the_services_routes_json_gives_it() -> None:
    catalog = merge(
        OWN,
        [
            source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON),
            source("notes", ["notes.v1.Notes", "tasks.v1.Tasks"], NOTES, COMMON),
        ],
        {"extra.v1.Extra": "notes"},
    )
    assert [c.backend for c in catalog.conflicts] == ["notes"]
    assert catalog.routes == {"extra.v1.Extra": "notes", "tasks.v1.Tasks": "tasks"}


# --- lookups -----------------------------------------------------------------------------------

NESTED = descriptor_pb2.FileDescriptorProto(name="deep/v1/deep.proto", package="deep.v1")
_outer = NESTED.message_type.add(name="Outer")
_outer.field.add(name="id", number=1, type=Field.TYPE_INT32, label=Field.LABEL_OPTIONAL)
_outer.nested_type.add(name="Inner")
_outer.enum_type.add(name="Kind").value.add(name="KIND_UNSPECIFIED", number=0)
NESTED.enum_type.add(name="Color").value.add(name="COLOR_RED", number=0)
# proto2 extensions of Outer, one at file level and one nested in a message.
NESTED.syntax = "proto2"
_outer.extension_range.add(start=100, end=200)
NESTED.extension.add(
    name="tag", number=100, extendee=".deep.v1.Outer", type=Field.TYPE_STRING,
    label=Field.LABEL_OPTIONAL,
)  # fmt: skip
_holder = NESTED.message_type.add(name="Holder")
_holder.extension.add(
    name="weight", number=150, extendee=".deep.v1.Outer", type=Field.TYPE_INT32,
    label=Field.LABEL_OPTIONAL,
)  # fmt: skip


@pytest.mark.parametrize(
    "symbol",
    [
        "deep.v1.Outer",
        "deep.v1.Outer.id",
        "deep.v1.Outer.Inner",
        "deep.v1.Outer.Kind",
        "deep.v1.Outer.KIND_UNSPECIFIED",
        "deep.v1.Color",
        "deep.v1.COLOR_RED",
        "deep.v1.tag",
        "deep.v1.Holder.weight",
    ],
)
def test_every_kind_of_symbol_is_found(symbol: str) -> None:
    catalog = merge(OWN, [source("deep", [], NESTED)])
    assert names(catalog.file_containing_symbol(symbol)) == ["deep/v1/deep.proto"]


def test_methods_and_services_are_symbols_too() -> None:
    catalog = merge(OWN, [source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON)])
    for symbol in ("tasks.v1.Tasks", "tasks.v1.Tasks.Watch", "gw.v1.Gw.Send"):
        assert catalog.file_containing_symbol(symbol), symbol
    assert catalog.file_containing_symbol("tasks.v1.Nope") == []


def test_a_file_comes_with_its_dependencies_not_yet_sent() -> None:
    catalog = merge(OWN, [source("tasks", ["tasks.v1.Tasks"], TASKS, COMMON)])
    both = ["tasks/v1/tasks.proto", "common/v1/common.proto"]
    assert names(catalog.file_by_filename("tasks/v1/tasks.proto")) == both
    sent = frozenset(both)
    # The file asked for always comes, even when it was sent before; its dependencies not.
    assert names(catalog.file_by_filename("tasks/v1/tasks.proto", sent)) == both[:1]
    assert catalog.file_by_filename("nowhere.proto") == []


def test_extensions_are_found_by_type_and_number() -> None:
    catalog = merge(OWN, [source("deep", [], NESTED)])
    assert catalog.extension_numbers("deep.v1.Outer") == (100, 150)
    assert catalog.extension_numbers("deep.v1.Outer.Inner") == ()
    assert catalog.extension_numbers("deep.v1.Nope") is None
    found = catalog.file_containing_extension("deep.v1.Outer", 150)
    assert names(found) == ["deep/v1/deep.proto"]
    assert catalog.file_containing_extension("deep.v1.Outer", 151) == []


# --- properties --------------------------------------------------------------------------------

SERVICE_NAMES = st.sampled_from(["a.v1.A", "b.v1.B", "c.v1.C", "d.v1.D"])


def backend_serving(name: str, services: Sequence[str]) -> DescriptorSet:
    """A back-end whose services are each in a file of their own (shared by name)."""
    files = [
        proto_file(
            f"{s.replace('.', '/')}.proto",
            s.rsplit(".", 1)[0],
            messages=[f"{s.rsplit('.', 1)[1]}Msg"],
            services={s.rsplit(".", 1)[1]: [("Call", False, False)]},
        )
        for s in services
    ]
    return source(name, services, *files)


@given(st.lists(st.lists(SERVICE_NAMES, unique=True, max_size=3), min_size=1, max_size=4))
def test_each_service_belongs_to_the_first_backend_that_lists_it(
    listed: list[list[str]],
) -> None:
    backends = [backend_serving(f"b{i}", services) for i, services in enumerate(listed)]
    catalog = merge(OWN, backends)
    refused = {c.backend for c in catalog.conflicts}
    owners: dict[str, str] = {}
    for backend in backends:
        if backend.source not in refused:
            for service in backend.services:
                owners.setdefault(service, backend.source)
    assert catalog.routes == owners
    for backend in backends:
        # Refused exactly when an earlier, merged back-end already had one of its services.
        earlier = {s for s, owner in owners.items() if owner != backend.source}
        assert (backend.source in refused) == bool(earlier & set(backend.services))
    for service in owners:
        assert service in catalog.services
        assert catalog.file_containing_symbol(service)
