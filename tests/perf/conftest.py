from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, running_stack

# The benchmark must measure the gateway's work, not its limits: no rate
# limiting (huge budgets, per user and per WebSocket), and the default health interval
# rather than the e2e stack's 200 ms, which would add background load.
BENCH_GATEWAY_ENV = {
    "RATE_LIMIT_MAX": "100000000",
    "RATE_LIMIT_WINDOW_MS": "3600000",
    "WS_MESSAGE_RATE_MAX": "100000000",
    "HEALTH_INTERVAL_MS": "5000",
}


@pytest.fixture(scope="module")
def bench_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both reference back-ends and the gateway as real processes, tuned for measuring."""
    with running_stack(Path(tmp_path_factory.mktemp("bench-stack")), **BENCH_GATEWAY_ENV) as s:
        yield s
