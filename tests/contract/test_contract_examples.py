"""The public contract: each recorded example in examples/ is replayed against a fresh stack and
must observe what was recorded (after normalisation, see normalise.py).

``CONTRACT_RECORD=1`` (``make contract-record``) writes what the running code says into the
examples' ``expect`` instead of comparing: the diff to review is the change of the contract.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.contract.normalise import normalise
from tests.contract.replay import Caller, replay
from tests.support.stack import Stack

EXAMPLES = Path(__file__).resolve().parent / "examples"
RECORD = os.environ.get("CONTRACT_RECORD") == "1"
PATHS = sorted(EXAMPLES.rglob("*.json"))

pytestmark = pytest.mark.e2e


def example_id(path: Path) -> str:
    return path.relative_to(EXAMPLES).with_suffix("").as_posix()


@pytest.fixture(params=PATHS, ids=example_id)
def example(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    path: Path = request.param
    return path, json.loads(path.read_text())


async def test_example(
    example: tuple[Path, dict[str, Any]], contract_stack: Callable[[str], Stack]
) -> None:
    path, spec = example
    stack = contract_stack(spec.get("stack", "default"))
    user = f"contract-{secrets.token_hex(6)}"
    steps = spec["steps"]
    observed = normalise(await replay(Caller(stack, stack.token(user)), steps), user=user)
    if RECORD:
        if os.environ.get("CI"):
            pytest.fail("contract examples are recorded by people, never in CI")
        for step, expect in zip(steps, observed, strict=True):
            step["expect"] = expect
        text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
        await asyncio.to_thread(path.write_text, text)
        return
    expected = [step.get("expect") for step in steps]
    if canonical(observed) != canonical(expected):
        pytest.fail(
            f"{example_id(path)}: the public contract changed ({spec['description']})\n"
            + diff(expected, observed)
            + "\nIf the change is intended, run `make contract-record` and review the diff.",
            pytrace=False,
        )


def canonical(value: Any) -> str:
    """JSON text with sorted keys: unlike ==, it tells 1 from 1.0 and from true."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def diff(expected: Any, observed: Any) -> str:
    def lines(value: Any) -> list[str]:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return "\n".join(
        difflib.unified_diff(lines(expected), lines(observed), "recorded", "observed", lineterm="")
    )


def test_every_example_says_what_it_shows() -> None:
    for path in PATHS:
        example = json.loads(path.read_text())
        assert example.get("description"), f"{example_id(path)} has no description"
        assert example.get("steps"), f"{example_id(path)} has no steps"


def test_the_examples_cover_every_public_surface() -> None:
    """Each surface, and each client error the docs promise, has at least one example."""
    steps = json.dumps([json.loads(p.read_text())["steps"] for p in PATHS])
    for needle in (
        '"path": "/messages"',
        '"path": "/events/stream"',
        '"ws": {',
        '"method": "Send"',
        '"method": "Converse"',
        '"method": "Subscribe"',
    ):
        assert needle in steps, f"no contract example has {needle}"
    for code in (
        "unauthenticated",
        "invalid_argument",
        "already_exists",
        "failed_precondition",
        "unimplemented",
        "UNAUTHENTICATED",
        "INVALID_ARGUMENT",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "UNIMPLEMENTED",
    ):
        assert f'"{code}"' in steps, f"no contract example records the error {code}"
