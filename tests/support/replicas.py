"""Several gateway replicas sharing one Redis (``REDIS_URL``) and one set of back-ends.

Each replica is a real ``serve`` process started from the CLI, with its own public ports,
its own ``DATA_DIR`` and its own log; all of them share the back-ends, the certificates,
the JWT secret and the Redis of the set. A replica can be killed with SIGKILL and started
again on its ports.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.stack import Process, Stack, free_port, wait_until

BIND_ATTEMPTS = 3
START_TIMEOUT_S = 30.0


@dataclass
class Replica:
    """One gateway process of a replica set; ``stack`` holds its ports."""

    name: str
    stack: Stack
    env: dict[str, str]
    process: Process | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def ws_url(self) -> str:
        return self.stack.ws_url

    @property
    def grpc_target(self) -> str:
        return self.stack.grpc_target

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    def start(self) -> None:
        """Start ``serve`` and wait for health 200; on a port taken meanwhile, use new ports."""
        for _ in range(BIND_ATTEMPTS):
            self.starts += 1
            proc = self.stack.start(f"gateway-{self.name}-{self.starts}", "serve", **self.env)
            wait_until(
                lambda p=proc: self.stack.health_status() == 200 or p.popen.poll() is not None,
                START_TIMEOUT_S,
                f"replica {self.name}: health 200",
            )
            self.process = proc
            if proc.popen.poll() is None or "address already in use" not in proc.log():
                break
            self.stack.processes.remove(proc)
            self.stack.ports.update(http=free_port(), grpc=free_port())
        assert self.alive, self.log()

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to Redis, sockets cut."""
        if self.process is not None and self.alive:
            self.process.popen.send_signal(signal.SIGKILL)
            self.process.popen.wait()

    def stop(self) -> None:
        self.stack.stop()
        self.process = None

    def log(self) -> str:
        return self.process.log() if self.process is not None else ""


@contextmanager
def running_replicas(
    backends: Stack, redis_url: str, names: tuple[str, ...], **env: str
) -> Iterator[list[Replica]]:
    """Start one replica per name on ``backends`` (whose back-ends must be running) and
    ``redis_url``, with ``env`` on top; stop them all on exit."""
    replicas = []
    try:
        for name in names:
            ports = {**backends.ports, "http": free_port(), "grpc": free_port()}
            stack = Stack(backends.workdir, secret=backends.secret, ports=ports)
            replica_env = {"REDIS_URL": redis_url, "DATA_DIR": f"data-{name}", **env}
            replica = Replica(name, stack, replica_env)
            replicas.append(replica)
            replica.start()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def revive(replicas: list[Replica]) -> None:
    """Start again every replica of the set that is not running."""
    for replica in replicas:
        if not replica.alive:
            replica.start()


@contextmanager
def backends_only(workdir: Path) -> Iterator[Stack]:
    """A working directory with certificates and config, and both reference back-ends."""
    stack = Stack.create(workdir)
    try:
        stack.start_backends()
        yield stack
    finally:
        stack.stop()
