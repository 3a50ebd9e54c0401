"""The pure health table: recording checks, the overall verdict and the /health body."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import gateway.health_state
from gateway.health_state import BackendHealth, HealthTable, Status, iso_utc

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z

# (name, results as (ok, latency_s, now_s), expected fields of the final record)
RECORD_CASES = [
    (
        "never checked",
        [],
        {
            "status": Status.UNKNOWN,
            "last_check_latency_ms": None,
            "last_success_at": None,
            "consecutive_failures": 0,
            "checks_total": 0,
            "failures_total": 0,
        },
    ),
    (
        "one success",
        [(True, 0.0125, T0)],
        {
            "status": Status.SERVING,
            "last_check_latency_ms": 12.5,
            "last_success_at": T0,
            "consecutive_failures": 0,
            "checks_total": 1,
            "failures_total": 0,
        },
    ),
    (
        "one failure",
        [(False, 0.5, T0)],
        {
            "status": Status.NOT_SERVING,
            "last_check_latency_ms": 500.0,
            "last_success_at": None,
            "consecutive_failures": 1,
            "checks_total": 1,
            "failures_total": 1,
        },
    ),
    (
        "failures after a success keep the success time",
        [(True, 0.001, T0), (False, 0.002, T0 + 5), (False, 0.003, T0 + 10)],
        {
            "status": Status.NOT_SERVING,
            "last_check_latency_ms": 3.0,
            "last_success_at": T0,
            "consecutive_failures": 2,
            "checks_total": 3,
            "failures_total": 2,
        },
    ),
    (
        "a success resets consecutive failures but not the total",
        [(False, 0.1, T0), (False, 0.1, T0 + 5), (True, 0.004, T0 + 10)],
        {
            "status": Status.SERVING,
            "last_check_latency_ms": 4.0,
            "last_success_at": T0 + 10,
            "consecutive_failures": 0,
            "checks_total": 3,
            "failures_total": 2,
        },
    ),
    (
        "a negative latency (clock step) is clamped to zero",
        [(True, -0.2, T0)],
        {
            "status": Status.SERVING,
            "last_check_latency_ms": 0.0,
            "last_success_at": T0,
            "consecutive_failures": 0,
            "checks_total": 1,
            "failures_total": 0,
        },
    ),
]


@pytest.mark.parametrize(
    ("results", "expected"),
    [case[1:] for case in RECORD_CASES],
    ids=[case[0] for case in RECORD_CASES],
)
def test_record(results: list[tuple[bool, float, float]], expected: dict[str, object]) -> None:
    table = HealthTable({"chat": True})
    for ok, latency_s, now_s in results:
        returned = table.record("chat", ok, latency_s, now_s)
        assert returned == table["chat"]
    record = table["chat"]
    actual = {key: getattr(record, key) for key in expected}
    assert actual == expected
    assert record.name == "chat"
    assert record.required is True


# (name, required flags, statuses reached by recording, expected overall_ok)
OVERALL_CASES = [
    ("no back-ends", {}, {}, True),
    ("required never checked", {"chat": True}, {}, False),
    ("required serving", {"chat": True}, {"chat": True}, True),
    ("required not serving", {"chat": True}, {"chat": False}, False),
    (
        "optional down does not matter",
        {"chat": True, "tasks": False},
        {"chat": True, "tasks": False},
        True,
    ),
    (
        "optional never checked does not matter",
        {"chat": True, "tasks": False},
        {"chat": True},
        True,
    ),
    (
        "one of two required down",
        {"chat": True, "tasks": True},
        {"chat": True, "tasks": False},
        False,
    ),
    ("one of two required unknown", {"chat": True, "tasks": True}, {"chat": True}, False),
    ("only optional back-ends, all down", {"tasks": False}, {"tasks": False}, True),
]


@pytest.mark.parametrize(
    ("required", "results", "expected"),
    [case[1:] for case in OVERALL_CASES],
    ids=[case[0] for case in OVERALL_CASES],
)
def test_overall_ok(required: dict[str, bool], results: dict[str, bool], expected: bool) -> None:
    table = HealthTable(required)
    for name, ok in results.items():
        table.record(name, ok, 0.001, T0)
    assert table.overall_ok() is expected
    assert table.overall_status() is (Status.SERVING if expected else Status.NOT_SERVING)
    assert table.to_json()["status"] == ("SERVING" if expected else "NOT_SERVING")


def test_to_json_body() -> None:
    table = HealthTable({"chat": True, "tasks": False})
    table.record("chat", True, 0.0123456, T0 + 0.25)
    table.record("tasks", False, 1.0, T0 + 1)
    body = table.to_json()
    assert body == {
        "status": "SERVING",
        "backends": {
            "chat": {
                "status": "SERVING",
                "required": True,
                "last_check_latency_ms": 12.346,
                "last_success_at": "2024-05-01T12:00:00.250Z",
                "consecutive_failures": 0,
                "checks_total": 1,
                "failures_total": 0,
            },
            "tasks": {
                "status": "NOT_SERVING",
                "required": False,
                "last_check_latency_ms": 1000.0,
                "last_success_at": None,
                "consecutive_failures": 1,
                "checks_total": 1,
                "failures_total": 1,
            },
        },
    }
    assert json.loads(json.dumps(body)) == body


def test_to_json_shows_each_breaker_next_to_its_health_without_changing_the_status() -> None:
    table = HealthTable({"chat": True, "tasks": True})
    table.record("chat", True, 0.001, T0)
    table.record("tasks", True, 0.001, T0)
    breakers = {
        "chat": {"state": "open", "consecutive_failures": 5, "open_remaining_ms": 1200},
        "tasks": {"state": "closed", "consecutive_failures": 0, "open_remaining_ms": 0},
        "unknown": {"state": "open"},
    }
    body = table.to_json(breakers)
    assert body["status"] == "SERVING"
    assert body["backends"]["chat"]["status"] == "SERVING"
    assert body["backends"]["chat"]["breaker"] == breakers["chat"]
    assert body["backends"]["tasks"]["breaker"]["state"] == "closed"
    assert set(body["backends"]) == {"chat", "tasks"}
    assert "breaker" not in table.to_json()["backends"]["chat"]


def test_to_json_before_any_check() -> None:
    body = HealthTable({"chat": True}).to_json()
    assert body["status"] == "NOT_SERVING"
    assert body["backends"]["chat"]["status"] == "UNKNOWN"
    assert body["backends"]["chat"]["last_check_latency_ms"] is None
    assert body["backends"]["chat"]["last_success_at"] is None


@pytest.mark.parametrize(
    ("unix_s", "expected"),
    [
        (None, None),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (T0, "2024-05-01T12:00:00.000Z"),
        (T0 + 0.0015, "2024-05-01T12:00:00.001Z"),
    ],
)
def test_iso_utc(unix_s: float | None, expected: str | None) -> None:
    assert iso_utc(unix_s) == expected


def test_record_unknown_backend_raises() -> None:
    table = HealthTable({"chat": True})
    with pytest.raises(KeyError):
        table.record("nope", True, 0.0, T0)


def test_empty_name_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        HealthTable({"": True})


def test_records_are_immutable() -> None:
    record = BackendHealth(name="chat", required=True)
    with pytest.raises(AttributeError):
        record.status = Status.SERVING  # type: ignore[misc]


def test_core_imports_no_io_library() -> None:
    source = Path(gateway.health_state.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"asyncio", "grpc", "grpc_health", "socket", "ssl", "time"})
