"""A private ``redis-server`` for tests: its own loopback port (below 32000), its own
directory, append-only file fsynced on every write, no RDB snapshots; stopped by PID.

The machine's shared Redis (127.0.0.1:6379) is never used. Without ``redis-server``
on PATH the tests that need it fail loudly: they are never skipped.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.stack import free_port, wait_until

SHARED_REDIS_PORT = 6379
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 3


def redis_server_binary() -> str:
    """The ``redis-server`` executable, or a failed test naming what is missing."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(
            "redis-server is not on PATH: the Redis store tests need it to start their own "
            "server (install it, e.g. `apt-get install redis-server`); they are never skipped",
            pytrace=False,
        )
    return path


def answers_ping(port: int) -> bool:
    """True once the server serves commands (not while it is still loading its AOF)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process in ``workdir``; ``restart`` keeps its data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._popen: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self) -> None:
        """Start on the current port (a new free one at first, or if it was taken)."""
        binary = redis_server_binary()
        for _ in range(BIND_ATTEMPTS):
            if not self.port:
                self.port = free_port()
            assert self.port != SHARED_REDIS_PORT, "never the machine's shared Redis"
            popen = subprocess.Popen(
                [
                    binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.workdir),
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", "always",
                    "--daemonize", "no",
                    "--logfile", str(self.log_path),
                ],
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

            def up_or_exited(p: subprocess.Popen[bytes] = popen) -> bool:
                return answers_ping(self.port) or p.poll() is not None

            wait_until(up_or_exited, START_TIMEOUT_S, f"redis-server on port {self.port}")
            if popen.poll() is None:
                self._popen = popen
                return
            self.port = 0  # most likely the port was taken meanwhile: try another one
        pytest.fail(f"redis-server did not start:\n{self.log()}", pytrace=False)

    def stop(self, *, crash: bool = False) -> None:
        """Stop by PID: SIGTERM (a clean shutdown), or SIGKILL to simulate a crash."""
        popen, self._popen = self._popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        try:
            popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()

    def restart(self, *, crash: bool = True) -> None:
        """Kill the server (by default without a clean shutdown) and start it again
        on the same directory: what it had acknowledged must come back from the AOF."""
        self.stop(crash=crash)
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A started ``RedisServer``, stopped on exit."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
