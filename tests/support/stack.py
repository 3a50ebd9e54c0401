"""Start real gateway and back-end processes from the CLI, on free loopback ports."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth import mint_token
from gateway.certs import create_dev_certs

ROOT = Path(__file__).resolve().parents[2]
BIND_ATTEMPTS = 3
ISSUER = "dialog-gateway"
AUDIENCE = "dialog"


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768 and up), so that the
    outgoing connections of a running suite cannot take it before the server binds it."""
    for _ in range(500):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Stack:
    """A working directory with certificates and config, and the processes started in it."""

    workdir: Path
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    tls: bool = True
    # Stem of a client certificate in certs/ (e.g. issued by gateway.certs.issue_client_cert)
    # that ssl_context() presents; empty: none.
    client_cert: str = ""

    @classmethod
    def create(cls, workdir: Path) -> Stack:
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ROOT / "config", workdir / "config", dirs_exist_ok=True)
        create_dev_certs(workdir / "certs")
        stack = cls(workdir)
        for name in ("chat", "tasks", "http", "grpc"):
            stack.ports[name] = free_port()
        return stack

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "ca.pem"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.ports['http']}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://localhost:{self.ports['http']}/ws"

    @property
    def grpc_target(self) -> str:
        return f"localhost:{self.ports['grpc']}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "JWT_"))}
        env.update(
            JWT_SECRET=self.secret,
            JWT_ISSUER=ISSUER,
            JWT_AUDIENCE=AUDIENCE,
            PORT=str(self.ports["http"]),
            GRPC_PORT=str(self.ports["grpc"]),
            CHAT_PORT=str(self.ports["chat"]),
            TASKS_PORT=str(self.ports["tasks"]),
            BACKEND_CHAT_TARGET=f"127.0.0.1:{self.ports['chat']}",
            BACKEND_TASKS_TARGET=f"127.0.0.1:{self.ports['tasks']}",
            HEALTH_INTERVAL_MS="200",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        return env

    def start(self, name: str, *args: str, **env: str) -> Process:
        log_path = self.workdir / f"{name}.log"
        popen = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=self.workdir,
            env=self.env(**env),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        proc = Process(name, popen, log_path)
        self.processes.append(proc)
        return proc

    def start_backends(self, **env: str) -> None:
        for name in ("chat", "tasks"):
            proc = self.start(name, "backend", name, **env)
            wait_until(
                lambda p=proc, n=name: port_open(self.ports[n]) or p.popen.poll() is not None,
                20,
                f"{name} back-end",
            )
            assert proc.popen.poll() is None, proc.log()

    @property
    def recorder_file(self) -> Path:
        return self.workdir / "recorder.jsonl"

    def start_recorder(self, name: str = "recorder", port: str = "chat", **env: str) -> Process:
        """The recording back-end (tests/support/recorder.py) on ``ports[port]`` (in place of
        ``chat`` by default), recording to ``<name>.jsonl`` (``recorder_file``)."""
        log_path = self.workdir / f"{name}.log"
        record = self.workdir / f"{name}.jsonl"
        popen = subprocess.Popen(
            [sys.executable, "-m", "tests.support.recorder"],
            cwd=self.workdir,
            env={
                **self.env(RECORDER_FILE=str(record), CHAT_PORT=str(self.ports[port]), **env),
                "PYTHONPATH": str(ROOT),
            },
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        proc = Process(name, popen, log_path)
        self.processes.append(proc)
        wait_until(lambda: port_open(self.ports[port]) or popen.poll() is not None, 20, name)
        assert popen.poll() is None, proc.log()
        return proc

    def start_probe(self, **env: str) -> Process:
        """The probe back-end (tests/support/probe.py, ``probe.v1.Probe``) on the ``chat``
        port, with the ``chat`` certificate."""
        log_path = self.workdir / "probe.log"
        probe_env = {
            "PROBE_PKI": str(self.workdir / "certs"),
            "PROBE_PORT": str(self.ports["chat"]),
        }
        popen = subprocess.Popen(
            [sys.executable, "-m", "tests.support.probe"],
            cwd=self.workdir,
            env={**self.env(**probe_env, **env), "PYTHONPATH": str(ROOT)},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        proc = Process("probe", popen, log_path)
        self.processes.append(proc)
        wait_until(lambda: port_open(self.ports["chat"]) or popen.poll() is not None, 20, "probe")
        assert popen.poll() is None, proc.log()
        return proc

    def start_gateway(self, **env: str) -> Process:
        """Start ``serve`` and wait for health 200; on a port taken meanwhile, use new ports."""
        for _ in range(BIND_ATTEMPTS):
            proc = self.start("gateway", "serve", **env)
            wait_until(
                lambda p=proc: self.health_status() == 200 or p.popen.poll() is not None,
                30,
                "gateway health 200",
            )
            if proc.popen.poll() is None or "address already in use" not in proc.log():
                break
            self.processes.remove(proc)
            for name in ("http", "grpc", "admin"):
                if name in self.ports:
                    self.ports[name] = free_port()
            env = {
                k: (str(self.ports["admin"]) if k == "ADMIN_PORT" else v) for k, v in env.items()
            }
        assert proc.popen.poll() is None, proc.log()
        return proc

    def health_status(self) -> int | None:
        try:
            context = self.ssl_context() if self.tls else None
            with urllib.request.urlopen(
                f"{self.base_url}/health", context=context, timeout=2
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.client_cert:
            certs = self.workdir / "certs"
            context.load_cert_chain(
                certs / f"{self.client_cert}.pem", certs / f"{self.client_cert}-key.pem"
            )
        return context

    def token(self, sub: str = "", *, ttl_s: int = 600, secret: str = "", **claims: str) -> str:
        return mint_token(
            secret or self.secret,
            sub or f"user-{secrets.token_hex(4)}",
            now_s=time.time(),
            ttl_s=ttl_s,
            issuer=claims.get("issuer", ISSUER),
            audience=claims.get("audience", AUDIENCE),
        )

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()


@contextmanager
def running_stack(workdir: Path, **gateway_env: str) -> Iterator[Stack]:
    """Both reference back-ends and a healthy gateway, stopped on exit."""
    stack = Stack.create(workdir)
    try:
        stack.start_backends()
        stack.start_gateway(**gateway_env)
        yield stack
    finally:
        stack.stop()
