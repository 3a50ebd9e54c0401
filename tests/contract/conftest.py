from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.stack import Stack, running_stack

# Stacks an example can ask for with "stack"; "default" is both reference back-ends and the
# gateway as `dialog-gateway up` runs them.
STACKS = ("default", "tasks_down")


@pytest.fixture(scope="session")
def contract_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Stack]]:
    """A fresh stack of the named kind, started when an example first asks for it and shared
    by the examples of the session (each example has a user of its own)."""
    started: dict[str, Stack] = {}
    with ExitStack() as stop:

        def get(name: str) -> Stack:
            if name not in STACKS:
                raise ValueError(f"unknown stack {name!r}: use one of {STACKS}")
            if name not in started:
                workdir = Path(tmp_path_factory.mktemp(f"contract-{name}"))
                stack = stop.enter_context(running_stack(workdir))
                if name == "tasks_down":
                    stop_backend(stack, "tasks")
                started[name] = stack
            return started[name]

        yield get


def stop_backend(stack: Stack, name: str) -> None:
    """Stop one reference back-end of a running stack."""
    for proc in [p for p in stack.processes if p.name == name]:
        proc.stop()
        stack.processes.remove(proc)
