"""The back-end keys of routes.json for the gRPC proxy (gateway.config): ``services``,
``scopes``, ``method_scopes`` and ``forward_metadata``, validated once at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BackendConfig, ConfigError, is_reserved_service, load_config

ENV = {"JWT_SECRET": "unit-test-secret"}


def load(tmp_path: Path, *backends: dict[str, Any]) -> tuple[BackendConfig, ...]:
    (tmp_path / "config").mkdir(exist_ok=True)
    routes = {"backends": [{"target": "127.0.0.1:1", **b} for b in backends]}
    (tmp_path / "config" / "routes.json").write_text(json.dumps(routes))
    return load_config(ENV, tmp_path).routes.backends


def test_the_proxy_keys_are_loaded(tmp_path: Path) -> None:
    [tasks] = load(
        tmp_path,
        {
            "name": "tasks",
            "services": ["dialog.tasks.v1.Tasks"],
            "scopes": ["tasks:read"],
            "method_scopes": {
                "dialog.tasks.v1.Tasks/CreateTask": ["tasks:write"],
                "dialog.tasks.v1.Admin": ["tasks:admin"],
            },
            "forward_metadata": ["x-tenant", "x-trace-bin"],
        },
    )
    assert tasks.services == ("dialog.tasks.v1.Tasks",)
    assert tasks.forward_metadata == ("x-tenant", "x-trace-bin")
    assert tasks.call_scopes("dialog.tasks.v1.Tasks", "GetTask") == {"tasks:read"}
    assert tasks.call_scopes("dialog.tasks.v1.Tasks", "CreateTask") == {
        "tasks:read",
        "tasks:write",
    }
    assert tasks.call_scopes("dialog.tasks.v1.Admin", "Reset") == {"tasks:read", "tasks:admin"}


def test_defaults_claim_nothing(tmp_path: Path) -> None:
    [chat] = load(tmp_path, {"name": "chat"})
    assert (chat.services, chat.scopes, chat.forward_metadata) == ((), (), ())
    assert chat.call_scopes("a.v1.A", "B") == frozenset()


def test_the_repository_routes_claim_the_tasks_service() -> None:
    root = Path(__file__).resolve().parents[2]
    backends = {b.name: b for b in load_config(ENV, root).routes.backends}
    assert "dialog.tasks.v1.Tasks" in backends["tasks"].services


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        (
            [{"name": "a", "services": ["x.v1.X"]}, {"name": "b", "services": ["x.v1.X"]}],
            r"backend 'b'\.services: 'x\.v1\.X' already belongs to backend 'a'",
        ),
        ([{"name": "a", "services": ["dialog.v1.Gateway"]}], "is the gateway's own"),
        ([{"name": "a", "services": ["grpc.health.v1.Health"]}], "is the gateway's own"),
        (
            [{"name": "a", "services": ["grpc.reflection.v1.ServerReflection"]}],
            "is the gateway's own",
        ),
        ([{"name": "a", "services": ["dialog.backend.v1.Backend"]}], "is the gateway's own"),
        ([{"name": "a", "services": ["Tasks"]}], "is not a full service name"),
        ([{"name": "a", "services": ["a.v1.X/Get"]}], "is not a full service name"),
        ([{"name": "a", "services": "x.v1.X"}], r"backend 'a'\.services: invalid value"),
        ([{"name": "a", "forward_metadata": ["authorization"]}], "is never forwarded"),
        ([{"name": "a", "forward_metadata": ["cookie"]}], "is never forwarded"),
        ([{"name": "a", "forward_metadata": ["x-dialog-user"]}], "is never forwarded"),
        ([{"name": "a", "forward_metadata": ["X-Upper"]}], "is not a metadata name"),
        ([{"name": "a", "forward_metadata": ["grpc-timeout"]}], "is not a metadata name"),
        ([{"name": "a", "method_scopes": {"x.v1.X/": ["s"]}}], "is not 'pkg.Service'"),
        ([{"name": "a", "method_scopes": {"x.v1.X": "s"}}], r"method_scopes\.x\.v1\.X"),
        ([{"name": "a", "method_scopes": ["x.v1.X"]}], r"backend 'a'\.method_scopes"),
        (
            [
                {"name": "a", "services": ["x.v1.X"]},
                {"name": "b", "method_scopes": {"x.v1.X/Get": ["s"]}},
            ],
            r"backend 'b'\.method_scopes: 'x\.v1\.X' belongs to backend 'a'",
        ),
    ],
)
def test_invalid_proxy_keys_stop_the_start(
    tmp_path: Path, backends: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, *backends)


@pytest.mark.parametrize(
    ("service", "reserved"),
    [
        ("dialog.v1.Gateway", True),
        ("dialog.backend.v1.Backend", True),
        ("grpc.channelz.v1.Channelz", True),
        ("dialog.tasks.v1.Tasks", False),
        ("grpcx.v1.Thing", False),
    ],
)
def test_reserved_services(service: str, reserved: bool) -> None:
    assert is_reserved_service(service) is reserved
