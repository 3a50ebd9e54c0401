"""Reloading a running gateway's routes with SIGHUP, as an operator does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from tests.support.stack import Process, Stack, wait_until

APPLIED = "configuration reloaded"
RELOAD_TIMEOUT_S = 20


async def sighup_reload(stack: Stack, gateway: Process, routes: dict[str, Any]) -> str:
    """Write ``routes`` as routes.json, SIGHUP the gateway, and return its reload log line."""
    (stack.workdir / "config" / "routes.json").write_text(json.dumps(routes))
    seen = gateway.log().count(APPLIED)
    os.kill(gateway.popen.pid, signal.SIGHUP)
    await asyncio.to_thread(
        wait_until, lambda: gateway.log().count(APPLIED) > seen, RELOAD_TIMEOUT_S, "the reload"
    )
    assert gateway.popen.poll() is None, gateway.log()
    return [line for line in gateway.log().splitlines() if APPLIED in line][seen]
