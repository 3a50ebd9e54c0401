"""Configuration (gateway.config): defaults < config/*.json < environment, validated once."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    BackendConfig,
    ConfigError,
    GatewayConfig,
    RetryPolicy,
    RouteRule,
    load_config,
)

SECRET = "unit-test-secret"
PROD_SECRET = "p" * 32
ENV = {"JWT_SECRET": SECRET}

ROUTES = {
    "backends": [
        {"name": "chat", "target": "127.0.0.1:50061", "server_name": "chat", "timeout_ms": 30000},
        {
            "name": "tasks",
            "target": "127.0.0.1:50062",
            "timeout_ms": 10000,
            "retry": {"max_attempts": 5, "initial_backoff_ms": 50},
        },
    ],
    "rules": [
        {"service": "tasks", "backend": "tasks"},
        {"service": "chat", "content_type": "text", "backend": "chat"},
    ],
    "default_backend": "chat",
}


def _write(base: Path, gateway: Any = None, routes: Any = None) -> Path:
    (base / "config").mkdir(exist_ok=True)
    for name, content in (("gateway.json", gateway), ("routes.json", routes)):
        if content is not None:
            text = content if isinstance(content, str) else json.dumps(content)
            (base / "config" / name).write_text(text)
    return base


def test_a_named_routes_file_that_is_missing_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"elsewhere\.json: file not found"):
        load_config({**ENV, "ROUTES_FILE": "elsewhere.json"}, tmp_path)


def test_defaults_without_files(tmp_path: Path) -> None:
    config = load_config(ENV, tmp_path)
    assert config == GatewayConfig(jwt_secret=SECRET)
    assert config.port == 8080
    assert config.tls is True
    assert config.rate_limit_max == 100
    assert config.rate_limit_window_s == 60.0
    assert config.routes.backends == ()
    assert config.routes.default_backend is None


def test_routes_file_is_loaded(tmp_path: Path) -> None:
    config = load_config(ENV, _write(tmp_path, routes=ROUTES))
    assert config.routes.backends == (
        BackendConfig(name="chat", target="127.0.0.1:50061", server_name="chat"),
        BackendConfig(
            name="tasks",
            target="127.0.0.1:50062",
            timeout_ms=10000,
            retry=RetryPolicy(max_attempts=5, initial_backoff_ms=50),
        ),
    )
    assert config.routes.rules == (
        RouteRule(backend="tasks", service="tasks"),
        RouteRule(backend="chat", service="chat", content_type="text"),
    )
    assert config.routes.default_backend == "chat"
    assert config.routes.backend("tasks").timeout_ms == 10000
    with pytest.raises(KeyError):
        config.routes.backend("nope")


# (name, gateway.json, env additions, expected fields)
OVERRIDE_CASES = [
    (
        "JSON overrides defaults",
        {"port": 9000, "tls": False, "rate_limit_max": 7},
        {},
        {"port": 9000, "tls": False, "rate_limit_max": 7},
    ),
    (
        "env overrides JSON",
        {"port": 9000, "rate_limit_max": 7},
        {"PORT": "9100", "RATE_LIMIT_MAX": "3"},
        {"port": 9100, "rate_limit_max": 3},
    ),
    (
        "env overrides defaults",
        {},
        {"GRPC_PORT": "50999", "LOG_LEVEL": "DEBUG"},
        {"grpc_port": 50999, "log_level": "DEBUG"},
    ),
    ("TLS=off", {"tls": True}, {"TLS": "off"}, {"tls": False}),
    ("TLS=false", {}, {"TLS": "false"}, {"tls": False}),
    ("TLS=0", {}, {"TLS": "0"}, {"tls": False}),
    ("TLS=on", {"tls": False}, {"TLS": "on"}, {"tls": True}),
    ("TLS=TRUE", {"tls": False}, {"TLS": "TRUE"}, {"tls": True}),
    ("JSON bool as a string", {"tls": "no"}, {}, {"tls": False}),
    ("env int with spaces", {}, {"PORT": " 8443 "}, {"port": 8443}),
    (
        "string fields",
        {"jwt_issuer": "gw"},
        {"JWT_AUDIENCE": "clients"},
        {"jwt_issuer": "gw", "jwt_audience": "clients"},
    ),
    ("lower-case env names are ignored", {}, {"port": "1"}, {"port": 8080}),
    (
        "production with a long secret",
        {},
        {"ENV": "production", "JWT_SECRET": PROD_SECRET},
        {"env": "production", "jwt_secret": PROD_SECRET},
    ),
]


@pytest.mark.parametrize(
    ("gateway", "env", "expected"),
    [c[1:] for c in OVERRIDE_CASES],
    ids=[c[0] for c in OVERRIDE_CASES],
)
def test_overrides(
    tmp_path: Path, gateway: dict[str, Any], env: dict[str, str], expected: dict[str, Any]
) -> None:
    config = load_config({**ENV, **env}, _write(tmp_path, gateway=gateway))
    for name, value in expected.items():
        assert getattr(config, name) == value, name


# (name, env additions, expected (backend name, field, value))
BACKEND_ENV_CASES = [
    (
        "BACKEND_CHAT_TARGET",
        {"BACKEND_CHAT_TARGET": "10.0.0.5:443"},
        ("chat", "target", "10.0.0.5:443"),
    ),
    (
        "other backend untouched",
        {"BACKEND_CHAT_TARGET": "10.0.0.5:443"},
        ("tasks", "target", "127.0.0.1:50062"),
    ),
    (
        "BACKEND_TASKS_TIMEOUT_MS",
        {"BACKEND_TASKS_TIMEOUT_MS": "2500"},
        ("tasks", "timeout_ms", 2500),
    ),
    (
        "BACKEND_CHAT_SERVER_NAME",
        {"BACKEND_CHAT_SERVER_NAME": "chat.internal"},
        ("chat", "server_name", "chat.internal"),
    ),
    ("DEFAULT_BACKEND", {"DEFAULT_BACKEND": "tasks"}, (None, "default_backend", "tasks")),
]


@pytest.mark.parametrize(
    ("env", "expected"),
    [c[1:] for c in BACKEND_ENV_CASES],
    ids=[c[0] for c in BACKEND_ENV_CASES],
)
def test_backend_env_overrides(
    tmp_path: Path, env: dict[str, str], expected: tuple[str | None, str, Any]
) -> None:
    config = load_config({**ENV, **env}, _write(tmp_path, routes=ROUTES))
    name, field, value = expected
    target = config.routes if name is None else config.routes.backend(name)
    assert getattr(target, field) == value


def test_routes_file_from_env(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"backends": [{"name": "solo", "target": "h:1"}]}))
    config = load_config({**ENV, "ROUTES_FILE": str(other)}, _write(tmp_path, routes=ROUTES))
    assert [b.name for b in config.routes.backends] == ["solo"]


# (name, gateway.json, routes.json, env (replaces ENV), fragment of the one-line message)
ERROR_CASES = [
    ("missing JWT_SECRET", None, None, {}, "JWT_SECRET"),
    ("empty JWT_SECRET", None, None, {"JWT_SECRET": ""}, "JWT_SECRET"),
    ("invalid int", None, None, {**ENV, "PORT": "abc"}, "PORT"),
    ("negative int", None, None, {**ENV, "RATE_LIMIT_MAX": "-1"}, "RATE_LIMIT_MAX"),
    ("zero where positive is needed", None, None, {**ENV, "RATE_LIMIT_MAX": "0"}, "RATE_LIMIT_MAX"),
    ("port out of range", None, None, {**ENV, "PORT": "70000"}, "PORT"),
    ("invalid bool", None, None, {**ENV, "TLS": "maybe"}, "TLS"),
    ("invalid int in JSON", {"grpc_port": "fifty"}, None, ENV, "grpc_port"),
    ("bool where an int is expected", {"port": True}, None, ENV, "port"),
    (
        "production with a short secret",
        None,
        None,
        {"JWT_SECRET": "short", "ENV": "production"},
        "JWT_SECRET",
    ),
    (
        "production with a dev secret",
        None,
        None,
        {"JWT_SECRET": "dev-" + "x" * 40, "ENV": "production"},
        "JWT_SECRET",
    ),
    ("unknown key in gateway.json", {"bogus": 1}, None, ENV, "bogus"),
    ("gateway.json is not an object", "[1, 2]", None, ENV, "gateway.json"),
    ("gateway.json is not JSON", "{port: 1", None, ENV, "gateway.json"),
    ("routes.json is not an object", None, "[]", ENV, "routes.json"),
    (
        "rule names an unknown backend",
        None,
        {"backends": [{"name": "chat", "target": "h:1"}], "rules": [{"backend": "nope"}]},
        ENV,
        "nope",
    ),
    (
        "rule with an unknown key",
        None,
        {
            "backends": [{"name": "chat", "target": "h:1"}],
            "rules": [{"backend": "chat", "bogus": 1}],
        },
        ENV,
        "bogus",
    ),
    ("backend without a target", None, {"backends": [{"name": "chat"}]}, ENV, "target"),
    (
        "backend with an unknown key",
        None,
        {"backends": [{"name": "chat", "target": "h:1", "bogus": 1}]},
        ENV,
        "bogus",
    ),
    (
        "default backend unknown in routes.json",
        None,
        {"backends": [{"name": "chat", "target": "h:1"}], "default_backend": "nope"},
        ENV,
        "DEFAULT_BACKEND",
    ),
    (
        "DEFAULT_BACKEND unknown",
        None,
        ROUTES,
        {**ENV, "DEFAULT_BACKEND": "weather"},
        "DEFAULT_BACKEND",
    ),
    (
        "invalid backend timeout from env",
        None,
        ROUTES,
        {**ENV, "BACKEND_CHAT_TIMEOUT_MS": "soon"},
        "BACKEND_CHAT_TIMEOUT_MS",
    ),
    ("unknown store sync mode", None, ROUTES, {**ENV, "STORE_SYNC": "sometimes"}, "STORE_SYNC"),
]


@pytest.mark.parametrize(
    ("gateway", "routes", "env", "fragment"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_config_errors(
    tmp_path: Path, gateway: Any, routes: Any, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env, _write(tmp_path, gateway=gateway, routes=routes))
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_invalid_int_message_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^PORT: invalid value 'abc'"):
        load_config({**ENV, "PORT": "abc"}, tmp_path)


def test_missing_secret_message_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^JWT_SECRET: "):
        load_config({}, tmp_path)


def test_result_is_frozen(tmp_path: Path) -> None:
    config = load_config(ENV, _write(tmp_path, routes=ROUTES))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes.default_backend = "tasks"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes.backends[0].target = "evil:1"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes.backends[1].retry.max_attempts = 99  # type: ignore[misc]
    assert isinstance(config.routes.backends, tuple)
    assert isinstance(config.routes.rules, tuple)


def test_load_config_does_not_modify_env(tmp_path: Path) -> None:
    env = {**ENV, "PORT": "9000"}
    load_config(env, tmp_path)
    assert env == {**ENV, "PORT": "9000"}


@pytest.mark.parametrize(
    "backend",
    [
        {"retry": {"bogus": 1}},
        {"retry": "fast"},
        {"retry": {"max_attempts": "many"}},
        {"required": "maybe"},
        {"timeout_ms": 1.5},
        {"colour": "blue"},
    ],
)
def test_bad_backend_fields_stop_the_start(tmp_path: Path, backend: dict[str, Any]) -> None:
    routes = {"backends": [{"name": "chat", "target": "h:1", **backend}]}
    with pytest.raises(ConfigError, match="backend 'chat'"):
        load_config(ENV, _write(tmp_path, routes=routes))
