"""The systems measured, each started on free loopback ports and stopped by PID.

- ``DialogSystem``: Dialog Gateway with one back-end behind it, either the fast Go echo
  back-end (tests/perf/go) or the reference Python chat back-end, and any gateway environment.
- ``GoGateway``: the Go gateway (grpc-gateway + grpc-websocket-proxy) with its Go echo back-end.
- ``NginxProxy``: nginx ``grpc_pass`` with TLS in front of a back-end, over mutual TLS.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.perf.procs import Processes, children_of
from tests.perf.tools import Tools
from tests.support.redis_server import redis_server_binary
from tests.support.stack import ROOT, Process, Stack, free_port, port_open, wait_until

# The gateway must be measured doing its work, not its limits: no rate limiting (huge budgets,
# per user and per WebSocket), and the default health interval rather than the e2e stack's
# 200 ms, which would add background load.
BENCH_GATEWAY_ENV: Mapping[str, str] = {
    "RATE_LIMIT_MAX": "1000000000",
    "RATE_LIMIT_WINDOW_MS": "3600000",
    "WS_MESSAGE_RATE_MAX": "1000000000",
    "HEALTH_INTERVAL_MS": "5000",
    "LOG_LEVEL": "WARNING",
    # Room for the idle-connection and fan-out measurements (up to 10,000 connections).
    "MAX_CONNECTIONS": "20000",
}
# The echo service the Go echo back-end serves for the transparent proxy path; the same name
# and message (echo.Msg: 1 id, 2 text) as the Go gateway's own echo back-end.
ECHO_SERVICE = "echo.Echo"
TOKEN_USERS = 1000  # one user per WebSocket (MAX_WS_CONN bounds the sockets of one user)
TOKEN_TTL_S = 3600


@dataclass
class DialogSystem:
    """Dialog Gateway and its back-end, started in ``stack.workdir``."""

    stack: Stack
    gateway: Process
    backend: Process
    backend_kind: str  # "go" or "python"
    tokens_file: Path
    fanout_token_file: Path  # one user of its own, for the fan-out measurement

    @property
    def certs(self) -> Path:
        return self.stack.workdir / "certs"

    @property
    def backend_target(self) -> str:
        return f"127.0.0.1:{self.stack.ports['chat']}"

    @property
    def pids(self) -> dict[str, list[int]]:
        """With WORKERS > 1 the gateway's CPU is its workers' (and the supervisor's)."""
        gateway = self.gateway.popen.pid
        return {"gateway": [gateway, *children_of(gateway)], "backend": [self.backend.popen.pid]}


def _routes(stack: Stack, backend_kind: str) -> dict[str, object]:
    services = [ECHO_SERVICE] if backend_kind == "go" else []
    backend = {
        "name": "chat",
        "target": f"127.0.0.1:{stack.ports['chat']}",
        "server_name": "chat",
        "timeout_ms": 30000,
        "services": services,
    }
    return {
        "backends": [backend],
        "rules": [{"service": "chat", "backend": "chat"}],
        "default_backend": "chat",
    }


def start_dialog(
    procs: Processes,
    workdir: Path,
    tools: Tools,
    *,
    backend_kind: str,
    gateway_env: Mapping[str, str],
) -> DialogSystem:
    """Dialog Gateway with the Go echo back-end (``go``) or the Python chat back-end."""
    stack = Stack.create(workdir)
    routes = workdir / "config" / "routes.json"
    routes.write_text(json.dumps(_routes(stack, backend_kind), indent=2))
    certs = workdir / "certs"
    try:
        if backend_kind == "go":
            if tools.echo is None:
                raise RuntimeError("the Go echo back-end was not built")
            port = stack.ports["chat"]
            backend = procs.start(
                f"{workdir.name}-echo",
                [
                    str(tools.echo),
                    "-listen",
                    f"127.0.0.1:{port}",
                    "-cert",
                    str(certs / "chat.pem"),
                    "-key",
                    str(certs / "chat-key.pem"),
                    "-ca",
                    str(certs / "ca.pem"),
                ],
                ready=lambda: port_open(port),
            )
        else:
            backend = stack.start("chat", "backend", "chat", LOG_LEVEL="WARNING")
            port = stack.ports["chat"]
            wait_until(
                lambda: port_open(port) or backend.popen.poll() is not None, 20, "chat back-end"
            )
        gateway = stack.start_gateway(
            **{**BENCH_GATEWAY_ENV, "ROUTES_FILE": str(routes), **gateway_env}
        )
    finally:
        for proc in stack.processes:
            if proc not in procs.started:
                procs.adopt(proc)
    tokens_file = workdir / "tokens.txt"
    tokens = (stack.token(f"bench-{i}", ttl_s=TOKEN_TTL_S) for i in range(TOKEN_USERS))
    tokens_file.write_text("\n".join(tokens) + "\n")
    tokens_file.chmod(0o600)
    fanout_token_file = workdir / "fanout-token.txt"
    fanout_token_file.write_text(stack.token("bench-fanout", ttl_s=TOKEN_TTL_S) + "\n")
    fanout_token_file.chmod(0o600)
    return DialogSystem(stack, gateway, backend, backend_kind, tokens_file, fanout_token_file)


@dataclass
class GoGateway:
    """The Go gateway and its Go echo back-end (plaintext, as its build serves them)."""

    gateway: Process
    backend: Process
    http_port: int
    backend_port: int

    @property
    def pids(self) -> dict[str, list[int]]:
        return {"gateway": [self.gateway.popen.pid], "backend": [self.backend.popen.pid]}


def start_go_gateway(procs: Processes, bin_dir: Path) -> GoGateway:
    backend_port, http_port = free_port(), free_port()
    backend = procs.start(
        "go-gateway-backend",
        [str(bin_dir / "echo-backend"), "-listen", f"127.0.0.1:{backend_port}"],
        ready=lambda: port_open(backend_port),
    )
    gateway = procs.start(
        "go-gateway",
        [
            str(bin_dir / "echo-gateway"),
            "-listen",
            f"127.0.0.1:{http_port}",
            "-backend",
            f"127.0.0.1:{backend_port}",
        ],
        ready=lambda: port_open(http_port),
    )
    return GoGateway(gateway, backend, http_port, backend_port)


NGINX_CONF = """\
{user_line}
worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {certs}/gateway.pem;
        ssl_certificate_key {certs}/gateway-key.pem;
        client_max_body_size 0;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
        location / {{
            grpc_pass grpcs://backend;
            grpc_ssl_certificate {certs}/gateway-client.pem;
            grpc_ssl_certificate_key {certs}/gateway-client-key.pem;
            grpc_ssl_trusted_certificate {certs}/ca.pem;
            grpc_ssl_verify on;
            grpc_ssl_name {server_name};
            grpc_ssl_server_name on;
            grpc_read_timeout 300s;
            grpc_send_timeout 300s;
        }}
    }}
}}
"""


@dataclass
class NginxProxy:
    master: Process
    port: int

    @property
    def pids(self) -> dict[str, list[int]]:
        master = self.master.popen.pid
        return {"gateway": [master, *children_of(master)]}


def start_nginx(
    procs: Processes, nginx: Path, prefix: Path, certs: Path, backend: str, server_name: str
) -> NginxProxy:
    """nginx as the current user, with its own prefix and configuration, on a free port."""
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Started as root, nginx would run its workers as "nobody", who cannot read the keys.
    user_line = (
        f"user {getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name};"
        if os.geteuid() == 0
        else ""
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user_line=user_line,
            prefix=prefix,
            port=port,
            backend=backend,
            certs=certs,
            server_name=server_name,
        )
    )
    master = procs.start(
        "nginx",
        [str(nginx), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        ready=lambda: port_open(port),
    )
    return NginxProxy(master, port)


@dataclass
class PythonFloor:
    """The Python floor (tests/perf/floor): a bare WebSocket server and a bare gRPC relay
    on the gateway's libraries, with the gateway's certificates and back-end."""

    ws: Process
    ws_port: int
    relay: Process
    relay_port: int

    @property
    def ws_url(self) -> str:
        return f"wss://localhost:{self.ws_port}/ws"

    @property
    def relay_target(self) -> str:
        return f"localhost:{self.relay_port}"


def start_floor(procs: Processes, gw: DialogSystem) -> PythonFloor:
    """The floor programs, serving with ``gw``'s certificates; the relay in front of
    ``gw``'s back-end."""
    certs = gw.certs
    server = [str(certs / "gateway.pem"), str(certs / "gateway-key.pem")]
    client = [str(certs / "ca.pem"), str(certs / "gateway-client.pem")]
    client.append(str(certs / "gateway-client-key.pem"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ws_port, relay_port = free_port(), free_port()
    ws = procs.start(
        "floor-ws",
        [sys.executable, "-m", "tests.perf.floor.ws", str(ws_port), *server],
        env=env,
        ready=lambda: port_open(ws_port),
    )
    relay = procs.start(
        "floor-relay",
        [
            sys.executable, "-m", "tests.perf.floor.relay", str(relay_port), *server,
            gw.backend_target, *client,
        ],
        env=env,
        ready=lambda: port_open(relay_port),
    )  # fmt: skip
    return PythonFloor(ws, ws_port, relay, relay_port)


def start_redis(procs: Processes, workdir: Path) -> str:
    """A redis-server of the run's own on a free loopback port (AOF, fsync every second:
    Redis's default durability); its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs.start(
        "redis",
        [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
        ],
        ready=lambda: port_open(port),
    )  # fmt: skip
    return f"redis://127.0.0.1:{port}/0"
