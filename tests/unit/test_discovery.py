"""Multi-address targets and Consul answers (gateway.discovery), and their configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BackendConfig, ConfigError, RoutesConfig, load_config
from gateway.discovery import (
    SERVICE_CONFIG,
    SERVICE_CONFIG_JSON,
    Found,
    OutlierPolicy,
    TargetError,
    WatchChanges,
    channel_target,
    compare,
    consul_services,
    healthy_addresses,
    next_index,
    retry_delay_s,
    target_addresses,
    watch_changes,
    with_discovered,
)

ENV = {"JWT_SECRET": "dev-" + "x" * 40}


def entry(address: str, port: Any, *, node: str = "10.0.0.9", status: str = "passing") -> Any:
    return {
        "Node": {"Address": node},
        "Service": {"Address": address, "Port": port},
        "Checks": [{"Status": status}],
    }


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("chat:50061", "chat:50061"),
        ("dns:///chat.internal:50061", "dns:///chat.internal:50061"),
        ("127.0.0.1:50061,127.0.0.1:50071", "ipv4:127.0.0.1:50061,127.0.0.1:50071"),
        ("127.0.0.1:1, 127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        ("[::1]:50061,[::1]:50071", "ipv6:[::1]:50061,[::1]:50071"),
    ],
)
def test_channel_target(target: str, expected: str) -> None:
    assert channel_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "chat:1,chat:2",  # host names cannot be listed: gRPC's ipv4 scheme takes literals
        "127.0.0.1:1,[::1]:2",
        "127.0.0.1:1,127.0.0.1:1",
        "127.0.0.1,127.0.0.1:2",
        "127.0.0.1:0,127.0.0.1:2",
        "127.0.0.1:1,",
    ],
)
def test_bad_address_lists_are_refused(target: str) -> None:
    with pytest.raises(TargetError):
        target_addresses(target)


def test_healthy_addresses_are_sorted_distinct_and_fall_back_to_the_node() -> None:
    body = [
        entry("127.0.0.2", 50071),
        entry("", 50061, node="127.0.0.1"),
        entry("127.0.0.2", 50071),
        entry("127.0.0.3", 50081, status="critical"),
        entry("chat.internal", 1),
        entry("127.0.0.4", None),
        {"Service": "nonsense"},
        entry("::1", 5),
    ]
    assert healthy_addresses(body) == (("127.0.0.1:50061", "127.0.0.2:50071", "[::1]:5"), 4)
    assert healthy_addresses([]) == ((), 0)
    with pytest.raises(ValueError, match="JSON array"):
        healthy_addresses({"not": "a list"})


@pytest.mark.parametrize(
    ("previous", "header", "expected"),
    [
        (0, "7", 7),
        (7, "7", 7),  # the wait ended without a change
        (7, "9", 9),
        (9, "3", 0),  # went backwards: reset
        (0, "0", 1),  # below 1: 1, or the next query would not block
        (5, None, 0),
        (5, "x", 0),
    ],
)
def test_next_index_follows_consuls_rules(previous: int, header: str | None, expected: int) -> None:
    assert next_index(previous, header) == expected


def test_compare_keeps_the_last_set_when_nothing_is_healthy() -> None:
    assert compare(None, ()) is Found.EMPTY
    assert compare(("a:1",), ()) is Found.EMPTY
    assert compare(None, ("a:1",)) is Found.CHANGED
    assert compare(("a:1",), ("a:1", "b:2")) is Found.CHANGED
    assert compare(("a:1", "b:2"), ("a:1", "b:2")) is Found.UNCHANGED


def test_with_discovered_replaces_only_consul_backends() -> None:
    routes = RoutesConfig(
        backends=(
            BackendConfig(name="chat", target="", consul_service="chat"),
            BackendConfig(name="tasks", target="127.0.0.1:9"),
            BackendConfig(name="spare", target="127.0.0.1:8", consul_service="spare"),
        ),
        rules=(),
        default_backend=None,
    )
    out = with_discovered(routes, {"chat": ("127.0.0.1:1", "127.0.0.1:2"), "tasks": ("x:1",)})
    assert [b.target for b in out.backends] == [
        "127.0.0.1:1,127.0.0.1:2",
        "127.0.0.1:9",
        "127.0.0.1:8",
    ]


def test_retry_delay_grows_and_is_capped() -> None:
    assert retry_delay_s(1, 0.999) < retry_delay_s(4, 0.999) <= 30
    assert retry_delay_s(100, 0.999) <= 30
    assert retry_delay_s(1, 0.0) == 0.1


def test_the_service_config_balances_round_robin_with_outlier_ejection() -> None:
    policy = SERVICE_CONFIG["loadBalancingConfig"][0]["outlier_detection_experimental"]
    assert policy["childPolicy"] == [{"round_robin": {}}]


def test_the_production_outlier_policy_is_the_documented_one() -> None:
    policy = SERVICE_CONFIG["loadBalancingConfig"][0]["outlier_detection_experimental"]
    assert policy == {
        "interval": "10.000s",
        "baseEjectionTime": "30.000s",
        "maxEjectionTime": "300.000s",
        "maxEjectionPercent": 50,
        "failurePercentageEjection": {
            "threshold": 85,
            "enforcementPercentage": 100,
            "minimumHosts": 2,
            "requestVolume": 20,
        },
        "childPolicy": [{"round_robin": {}}],
    }
    assert json.loads(SERVICE_CONFIG_JSON) == SERVICE_CONFIG


def test_an_outlier_policy_writes_its_durations_as_protobuf_json() -> None:
    config = OutlierPolicy(interval_s=0.2, base_ejection_s=1.5).service_config()
    policy = config["loadBalancingConfig"][0]["outlier_detection_experimental"]
    assert (policy["interval"], policy["baseEjectionTime"]) == ("0.200s", "1.500s")


def test_consul_services_names_the_backends_that_follow_one() -> None:
    routes = RoutesConfig(
        backends=(
            BackendConfig("chat", "", consul_service="chat-svc"),
            BackendConfig("tasks", "127.0.0.1:50062"),
        ),
        rules=(),
        default_backend="chat",
    )
    assert consul_services(routes) == {"chat": "chat-svc"}


@pytest.mark.parametrize(
    ("current", "wanted", "expected"),
    [
        ({}, {}, WatchChanges()),
        ({}, {"a": "s"}, WatchChanges(start=("a",))),
        ({"a": "s"}, {}, WatchChanges(stop=("a",))),
        ({"a": "s"}, {"a": "s"}, WatchChanges()),
        # Another service: what the old one found says nothing about the new one.
        ({"a": "s"}, {"a": "t"}, WatchChanges(stop=("a",), start=("a",))),
        (
            {"a": "s", "b": "s", "c": "u"},
            {"b": "s", "c": "v", "d": "w"},
            WatchChanges(stop=("a", "c"), start=("c", "d")),
        ),
    ],
)
def test_watch_changes_stops_and_starts_the_loops_that_differ(
    current: dict[str, str], wanted: dict[str, str], expected: WatchChanges
) -> None:
    assert watch_changes(current, wanted) == expected


def _load(tmp_path: Path, backends: list[dict[str, Any]], **env: str) -> Any:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "routes.json").write_text(json.dumps({"backends": backends}))
    return load_config({**ENV, **env}, tmp_path)


def test_consul_settings_and_multi_address_targets_load(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        [
            {"name": "chat", "consul_service": "chat", "server_name": "chat"},
            {"name": "tasks", "target": "127.0.0.1:1,127.0.0.1:2"},
        ],
        CONSUL_HTTP_ADDR="http://127.0.0.1:8500",
        CONSUL_HTTP_TOKEN="secret",
        CONSUL_WAIT_S="5",
    )
    assert (config.consul_http_addr, config.consul_http_token, config.consul_wait_s) == (
        "http://127.0.0.1:8500",
        "secret",
        5,
    )
    assert config.routes.backend("chat").consul_service == "chat"
    assert config.routes.backend("chat").target == ""
    assert config.routes.backend("tasks").target == "127.0.0.1:1,127.0.0.1:2"


@pytest.mark.parametrize(
    ("backends", "env", "message"),
    [
        ([{"name": "chat", "consul_service": "chat"}], {}, "CONSUL_HTTP_ADDR: not set"),
        (
            [{"name": "chat", "consul_service": "chat"}],
            {"CONSUL_HTTP_ADDR": "ftp://x"},
            "CONSUL_HTTP_ADDR: expected",
        ),
        (
            [{"name": "chat", "target": "a:1,b:2"}],
            {},
            "'chat'.target: 'a:1': a list of addresses needs IP literals",
        ),
        ([{"name": "chat"}], {}, "a target or a consul_service"),
        ([{"name": "chat", "target": ""}], {}, "empty, and no consul_service"),
    ],
)
def test_bad_discovery_settings_stop_the_start(
    tmp_path: Path, backends: list[dict[str, Any]], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        _load(tmp_path, backends, **env)
