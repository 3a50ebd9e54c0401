"""Configuration of authentication (gateway.config ``_validate``), route scopes and the
``token`` command's preconditions: which settings start the gateway, and which stop it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dialog.v1 import message_pb2
from gateway.cli import _mint
from gateway.config import ConfigError, RouteRule, load_config
from gateway.routing import Route, RouteTable

LONG_SECRET = "x" * 32

# (name, env, expected attributes)
VALID_CASES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("JWKS_FILE only", {"JWKS_FILE": "jwks.json"}, {"jwt_secret": "", "jwks_file": "jwks.json"}),
    ("JWKS_URL https", {"JWKS_URL": "https://id.example/.well-known/jwks.json"}, {}),
    ("JWKS_URL http on 127.0.0.1", {"JWKS_URL": "http://127.0.0.1:8081/jwks"}, {}),
    ("JWKS_URL http on 127.9.9.9", {"JWKS_URL": "http://127.9.9.9/jwks"}, {}),
    ("JWKS_URL http on [::1]", {"JWKS_URL": "http://[::1]:8081/jwks"}, {}),
    ("JWKS_URL http on localhost", {"JWKS_URL": "http://localhost:8081/jwks"}, {}),
    ("secret and JWKS", {"JWT_SECRET": "s", "JWKS_FILE": "j.json"}, {"jwt_secret": "s"}),
    ("production, JWKS only", {"ENV": "production", "JWKS_FILE": "j.json"}, {}),
    ("production, long secret", {"ENV": "production", "JWT_SECRET": LONG_SECRET}, {}),
    # Only the token command uses TOKEN_TTL_S: it refuses to mint over the cap (below).
    ("TOKEN_TTL_S over the cap", {"JWT_SECRET": "s", "MAX_TOKEN_TTL_S": "60"}, {}),
]


@pytest.mark.parametrize(
    ("env", "expected"), [c[1:] for c in VALID_CASES], ids=[c[0] for c in VALID_CASES]
)
def test_valid(tmp_path: Path, env: dict[str, str], expected: dict[str, Any]) -> None:
    config = load_config(env, tmp_path)
    for name, value in expected.items():
        assert getattr(config, name) == value


# (name, env, the message's start: the variable it names)
INVALID_CASES: list[tuple[str, dict[str, str], str]] = [
    ("no key at all", {}, "JWT_SECRET: no signing key configured"),
    ("both JWKS sources", {"JWKS_FILE": "j", "JWKS_URL": "https://id.example/j"}, "JWKS_URL: "),
    ("http to another host", {"JWKS_URL": "http://id.example/jwks"}, "JWKS_URL: must use https"),
    ("http to a private address", {"JWKS_URL": "http://10.0.0.1/jwks"}, "JWKS_URL: must use"),
    ("http to localhost.evil", {"JWKS_URL": "http://localhost.evil/j"}, "JWKS_URL: must use"),
    ("another scheme", {"JWKS_URL": "file:///etc/jwks.json"}, "JWKS_URL: expected an https"),
    ("no host", {"JWKS_URL": "https:///jwks"}, "JWKS_URL: expected an https"),
    ("a bad port", {"JWKS_URL": "https://id.example:99999/j"}, "JWKS_URL: not a valid URL"),
    ("credentials", {"JWKS_URL": "https://u:p@id.example/j"}, "JWKS_URL: must not contain"),
    (
        "production, the .env.example secret",
        {"ENV": "production", "JWT_SECRET": "change-me"},
        "JWT_SECRET: production refuses the development secret",
    ),
    (
        "production, a dev- secret",
        {"ENV": "production", "JWT_SECRET": "dev-" + "x" * 40},
        "JWT_SECRET: production refuses the development secret",
    ),
    (
        "production, 31 bytes",
        {"ENV": "production", "JWT_SECRET": "x" * 31},
        "JWT_SECRET: production needs a secret of at least 32 bytes",
    ),
    (
        "production, a short secret beside JWKS",
        {"ENV": "production", "JWT_SECRET": "short", "JWKS_FILE": "j.json"},
        "JWT_SECRET: production needs",
    ),
    ("zero MAX_TOKEN_TTL_S", {"JWT_SECRET": "s", "MAX_TOKEN_TTL_S": "0"}, "MAX_TOKEN_TTL_S: "),
    ("zero JWKS_TTL_S", {"JWKS_FILE": "j", "JWKS_TTL_S": "0"}, "JWKS_TTL_S: must be positive"),
    ("zero cooldown", {"JWKS_FILE": "j", "JWKS_REFETCH_COOLDOWN_S": "0"}, "JWKS_REFETCH_"),
    ("zero timeout", {"JWKS_FILE": "j", "JWKS_TIMEOUT_MS": "0"}, "JWKS_TIMEOUT_MS: "),
]


@pytest.mark.parametrize(
    ("env", "message"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env, tmp_path)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# Route scopes
# ---------------------------------------------------------------------------


def _routes(tmp_path: Path, rules: list[dict[str, Any]]) -> Path:
    (tmp_path / "config").mkdir(exist_ok=True)
    routes = {"backends": [{"name": "tasks", "target": "127.0.0.1:1"}], "rules": rules}
    (tmp_path / "config" / "routes.json").write_text(json.dumps(routes))
    return tmp_path


def test_rule_scopes_from_routes_json(tmp_path: Path) -> None:
    rules = [
        {"service": "tasks", "backend": "tasks", "scopes": ["tasks:write", "tasks:read"]},
        {"service": "other", "backend": "tasks"},
    ]
    config = load_config({"JWT_SECRET": "s"}, _routes(tmp_path, rules))
    assert config.routes.rules == (
        RouteRule(backend="tasks", service="tasks", scopes=("tasks:write", "tasks:read")),
        RouteRule(backend="tasks", service="other", scopes=()),
    )


@pytest.mark.parametrize(
    "scopes",
    ["tasks:write", ["a b"], ["ok", ""], ["ok", 1], [["nested"]], {"a": 1}, None],
    ids=["a string", "whitespace", "empty", "a number", "nested", "an object", "null"],
)
def test_invalid_rule_scopes_stop_the_start(tmp_path: Path, scopes: Any) -> None:
    rules = [{"service": "tasks", "backend": "tasks", "scopes": scopes}]
    with pytest.raises(ConfigError, match=r"rule\.scopes: invalid value"):
        load_config({"JWT_SECRET": "s"}, _routes(tmp_path, rules))


def _msg(service: str) -> message_pb2.Message:
    msg = message_pb2.Message()
    msg.context.service = service
    return msg


def test_resolve_gives_the_rules_scopes() -> None:
    table = RouteTable(
        rules=(
            RouteRule(backend="tasks", service="tasks", scopes=("tasks:write",)),
            RouteRule(backend="chat", service="chat"),
        ),
        default_backend="chat",
    )
    assert table.resolve(_msg("tasks")) == Route("tasks", ("tasks:write",))
    assert table.resolve(_msg("chat")) == Route("chat", ())
    assert table.resolve(_msg("")) == Route("chat", ())
    assert table.match(_msg("tasks")) == "tasks"


# ---------------------------------------------------------------------------
# dialog-gateway token
# ---------------------------------------------------------------------------


def test_token_command_needs_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="needs JWT_SECRET"):
        _mint({"JWKS_FILE": "jwks.json"}, "alice")


def test_token_command_refuses_a_ttl_over_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"JWT_SECRET": "s" * 32, "MAX_TOKEN_TTL_S": "600"}
    with pytest.raises(SystemExit, match=r"a 601 s token .* is over MAX_TOKEN_TTL_S \(600\)"):
        _mint(env, "alice", ttl_s=601)
    with pytest.raises(SystemExit, match="a 900 s token"):
        _mint(env, "alice")  # TOKEN_TTL_S's default
    assert _mint(env, "alice", ttl_s=600).count(".") == 2
