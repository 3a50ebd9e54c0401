from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both reference back-ends and the gateway, started from the CLI as real processes."""
    s = Stack.create(Path(tmp_path_factory.mktemp("stack")))
    try:
        s.start_backends()
        s.start_gateway()
        yield s
    finally:
        s.stop()
