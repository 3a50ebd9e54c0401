"""`dialog-gateway up` (what `make run` starts): every process comes up and stops together."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.support.stack import Stack, wait_until


def test_up_starts_gateway_and_backends_and_stops_them(tmp_path: Path) -> None:
    s = Stack.create(tmp_path)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "gateway", "up"],
        cwd=tmp_path, env=s.env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: s.health_status() == 200 or up.poll() is not None, 60, "health 200")
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
        assert s.health_status() is None
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
