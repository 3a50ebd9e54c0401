"""A gateway with tight limits in front of the recording back-end (tests/support/recorder.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.recorder import received
from tests.support.stack import Stack

ORIGIN = "https://app.example"
LIMITS = {
    "ALLOWED_ORIGINS": ORIGIN,
    "JWT_LEEWAY_S": "0",
    "WS_MESSAGE_RATE_MAX": "5",
    "WS_MESSAGE_RATE_WINDOW_MS": "60000",
    "WS_RATE_VIOLATIONS_MAX": "2",
    "OUTBOUND_QUEUE_MAX": "16",
    "MAX_HEADER_BYTES": "4096",
    "HEAD_TIMEOUT_MS": "500",
    "BODY_TIMEOUT_MS": "500",
    "JSON_MAX_DEPTH": "8",
    "AUTH_TIMEOUT_MS": "500",
    "RATE_LIMIT_MAX": "100000",
}


@pytest.fixture(scope="package")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.create(Path(tmp_path_factory.mktemp("guarded")))
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway(**LIMITS)
        yield s
    finally:
        s.stop()


class Recorder:
    """What the recording back-end received from one user."""

    def __init__(self, stack: Stack, user: str):
        self.stack = stack
        self.user = user

    def messages(self) -> list[dict[str, str]]:
        return [m for m in received(self.stack.recorder_file) if m["user"] == self.user]


@pytest.fixture
def attacker(guarded: Stack, request: pytest.FixtureRequest) -> Recorder:
    """A fresh user per test; the test asserts what reached the back-end for them."""
    return Recorder(guarded, f"attacker-{request.node.name}"[:120])
