from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both reference back-ends and the gateway, started from the CLI as real processes."""
    with running_stack(Path(tmp_path_factory.mktemp("stack"))) as s:
        yield s
