"""WORKERS (gateway.config): worker processes share their state through Redis only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ENV = {"JWT_SECRET": "unit-test-secret"}
REDIS = {"REDIS_URL": "redis://127.0.0.1:6399/0"}


def test_one_worker_by_default(tmp_path: Path) -> None:
    assert load_config(ENV, tmp_path).workers == 1


def test_the_environment_overrides_gateway_json(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "gateway.json").write_text(json.dumps({"workers": 3, **{
        "redis_url": REDIS["REDIS_URL"]}}))  # fmt: skip
    assert load_config(ENV, tmp_path).workers == 3
    assert load_config({**ENV, "WORKERS": "2"}, tmp_path).workers == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKERS": "0"}, r"^WORKERS: must be positive$"),
        ({"WORKERS": "two"}, r"^WORKERS: invalid value"),
        ({"WORKERS": "2"}, r"^WORKERS: 2 workers need REDIS_URL .*set REDIS_URL or WORKERS=1$"),
        ({"WORKERS": "2", "PORT": "0", **REDIS}, r"^WORKERS: 2 workers need a fixed PORT$"),
        ({"WORKERS": "2", "GRPC_PORT": "0", **REDIS}, r"^WORKERS: .* a fixed GRPC_PORT$"),
    ],
)
def test_invalid_workers_stop_the_start(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({**ENV, **env}, tmp_path)


def test_several_workers_with_redis(tmp_path: Path) -> None:
    config = load_config({**ENV, **REDIS, "WORKERS": "4"}, tmp_path)
    assert (config.workers, config.redis_url) == (4, REDIS["REDIS_URL"])
