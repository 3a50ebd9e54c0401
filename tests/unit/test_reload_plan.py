"""What a configuration reload changes (gateway.reload_plan): pure, no event loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import BackendConfig, GatewayConfig, RoutesConfig
from gateway.reload_plan import (
    AUTH_SETTINGS,
    LIVE_SETTINGS,
    config_files,
    in_force,
    keys_reload,
    resolve,
    restart_only_changes,
)
from tests.unit import test_pure_core as pure_core

BASE = Path("/srv/gateway")
CURRENT = GatewayConfig(jwt_secret="s" * 40)


def test_the_module_is_pure() -> None:
    """The checks tests/unit/test_pure_core.py makes of every module of the pure core."""
    module = "gateway.reload_plan"
    pure_core.test_pure_module_imports_no_io_library(module)
    pure_core.test_pure_module_does_not_read_the_environment(module)
    pure_core.test_pure_module_imports_only_pure_gateway_modules(module)


def test_every_live_setting_and_auth_setting_is_a_setting() -> None:
    names = {f.name for f in dataclasses.fields(GatewayConfig)}
    assert names >= LIVE_SETTINGS
    assert LIVE_SETTINGS >= AUTH_SETTINGS


@pytest.mark.parametrize(
    ("changes", "restart"),
    [
        ({}, ()),
        ({"rate_limit_max": 7, "jwt_secret": "t" * 40, "jwks_ttl_s": 60}, ()),
        ({"port": 9999}, ("port",)),
        (
            {"port": 9999, "max_message_bytes": 10, "rate_limit_max": 7},
            ("port", "max_message_bytes"),
        ),
    ],
)
def test_restart_only_changes_names_the_settings_a_reload_cannot_change(
    changes: dict[str, object], restart: tuple[str, ...]
) -> None:
    loaded = dataclasses.replace(CURRENT, **changes)
    assert set(restart_only_changes(CURRENT, loaded)) == set(restart)


def test_in_force_takes_the_live_settings_and_keeps_the_others() -> None:
    loaded = dataclasses.replace(CURRENT, port=9999, rate_limit_max=7, jwt_secret="t" * 40)
    applied = in_force(CURRENT, loaded)
    assert applied.port == CURRENT.port
    assert (applied.rate_limit_max, applied.jwt_secret) == (7, "t" * 40)


def test_config_files_lists_each_file_once_resolved_against_the_base() -> None:
    shared = dict(ca_file="certs/ca.pem", cert_file="certs/c.pem", key_file="/keys/c-key.pem")
    routes = RoutesConfig(
        backends=(BackendConfig("a", "127.0.0.1:1", **shared), BackendConfig("b", "x:1", **shared)),
        rules=(),
        default_backend="a",
    )
    config = dataclasses.replace(CURRENT, routes=routes, jwks_file="keys/jwks.json")
    assert config_files(config, BASE) == [
        BASE / "config/gateway.json",
        BASE / "config/routes.json",
        BASE / "certs/ca.pem",
        Path("/keys/c-key.pem"),
        BASE / "certs/c.pem",
        BASE / "keys/jwks.json",
    ]
    assert BASE / "keys/jwks.json" not in config_files(CURRENT, BASE)


def test_resolve_keeps_an_absolute_path() -> None:
    assert resolve(BASE, "/etc/x") == Path("/etc/x")
    assert resolve(BASE, "x") == BASE / "x"


JWKS = dataclasses.replace(CURRENT, jwt_secret="", jwks_file="jwks.json")
URL = dataclasses.replace(CURRENT, jwt_secret="", jwks_url="https://idp.example/jwks")


@pytest.mark.parametrize(
    ("current", "loaded", "keys_stamp", "loaded_stamp", "expected"),
    [
        (CURRENT, CURRENT, None, None, False),
        (CURRENT, dataclasses.replace(CURRENT, jwt_secret="t" * 40), None, None, True),
        (CURRENT, dataclasses.replace(CURRENT, jwt_leeway_s=5), None, None, True),
        (CURRENT, dataclasses.replace(CURRENT, rate_limit_max=7), None, None, False),
        # The same JWKS file: loaded again only when it was written since.
        (JWKS, JWKS, (1, 10), (1, 10), False),
        (JWKS, JWKS, (1, 10), (2, 10), True),
        (JWKS, JWKS, (1, 10), None, True),  # gone: the load fails and rejects the reload
        # A JWKS URL: its refresher follows it; fetched again only for other settings.
        (URL, URL, None, None, False),
        (URL, dataclasses.replace(URL, jwks_url="https://idp.example/v2"), None, None, True),
    ],
)
def test_keys_reload_when_a_key_setting_or_the_key_file_changed(
    current: GatewayConfig,
    loaded: GatewayConfig,
    keys_stamp: tuple[int, int] | None,
    loaded_stamp: tuple[int, int] | None,
    expected: bool,
) -> None:
    assert (
        keys_reload(current, loaded, keys_stamp=keys_stamp, loaded_stamp=loaded_stamp) is expected
    )
