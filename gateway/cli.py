"""``dialog-gateway``: run the gateway and its reference back-ends, and talk to them.

This is the only module that reads the process environment: it merges ``.env``
(if present) under the real environment and passes the result down.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from gateway.auth import mint_token
from gateway.client.frames import CHAT_HELP
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.logs import setup_logging

log = logging.getLogger("dialog_gateway")
BACKENDS = ("chat", "tasks")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The gateway drains within DRAIN_TIMEOUT_S; this covers its start-up and shutdown.
GATEWAY_STOP_MARGIN_S = 5.0
BACKEND_STOP_S = 10.0


def environment(base_dir: Path) -> dict[str, str]:
    """``.env`` values, overridden by the real environment (12-factor)."""
    values = {k: v for k, v in dotenv_values(base_dir / ".env").items() if v is not None}
    values.update(os.environ)
    return values


def _run(main: Any) -> None:
    """Run a coroutine on uvloop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _config(env: Mapping[str, str]) -> GatewayConfig:
    try:
        return load_config(env, Path.cwd())
    except ConfigError as exc:
        raise SystemExit(f"dialog-gateway: configuration error: {exc}") from None


def cmd_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """One gateway process; with ``WORKERS`` > 1, the supervisor of that many worker
    processes (``gateway.workers``), each of which runs this command again."""
    from gateway.workers import METRICS_DIR_ENV, WORKER_ENV, supervise

    config = _config(env)
    if config.workers > 1 and WORKER_ENV not in env:
        return supervise(config, env)
    if WORKER_ENV in env and METRICS_DIR_ENV in env:
        from gateway.metrics import expose_every_worker

        expose_every_worker(env[METRICS_DIR_ENV])
    from gateway.server import serve
    from gateway.tracing import tracing_config

    try:
        traces = tracing_config(env, "dialog-gateway")
        _run(serve(config, Path.cwd(), traces=traces, env=env))
    except ConfigError as exc:
        raise SystemExit(f"dialog-gateway: configuration error: {exc}") from None
    return 0


def cmd_backend(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from adapters.cli import main as run_adapter

    if args.name == "chat":
        from adapters.chat.server import run
    else:
        from adapters.tasks.server import run
    return run_adapter(run, env)


def cmd_dead_letters(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from gateway.deadletters import dead_letters
    from gateway.errors import StoreUnavailable

    config = _config(env)
    try:
        lines = asyncio.run(
            dead_letters(config, Path.cwd(), replay=args.replay or "", limit=args.limit)
        )
    except (LookupError, StoreUnavailable) as exc:
        raise SystemExit(f"dialog-gateway: {exc}") from None
    for line in lines:
        print(line)
    return 0


def cmd_certs(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from gateway.certs import create_dev_certs

    made = create_dev_certs(Path(args.dir), force=args.force)
    print(f"{'created' if made else 'kept existing'} development certificates in {args.dir}/")
    return 0


def _mint(
    env: Mapping[str, str], subject: str, ttl_s: int | None = None, scopes: tuple[str, ...] = ()
) -> str:
    """A development HS256 token; needs JWT_SECRET (JWKS tokens come from their issuer)."""
    config = _config(env)
    if not config.jwt_secret:
        raise SystemExit(
            "dialog-gateway: minting a development token needs JWT_SECRET "
            "(with only JWKS_FILE or JWKS_URL, get tokens from your identity provider)"
        )
    ttl_s = ttl_s or config.token_ttl_s
    if ttl_s > config.max_token_ttl_s:
        raise SystemExit(
            f"dialog-gateway: a {ttl_s} s token (--ttl or TOKEN_TTL_S) is over "
            f"MAX_TOKEN_TTL_S ({config.max_token_ttl_s}); the gateway would refuse it"
        )
    return mint_token(
        config.jwt_secret,
        subject,
        now_s=time.time(),
        ttl_s=ttl_s,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        scopes=scopes,
    )


def cmd_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    print(_mint(env, args.sub, args.ttl, tuple(args.scope)))
    return 0


def _client_target(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, str, str | None]:
    url = args.url
    if not url:
        config = _config(env)
        url = f"{'wss' if config.tls else 'ws'}://localhost:{config.port}/ws"
    token = args.token or env.get("TOKEN") or _mint(env, args.sub)
    return url, token, args.cacert if url.startswith("wss") else None


def cmd_send(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from gateway.client import send

    url, token, ca_file = _client_target(args, env)
    return asyncio.run(
        send(url, token, args.text, service=args.service, ca_file=ca_file, out=sys.stdout)
    )


def cmd_chat(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from gateway.client import chat

    url, token, ca_file = _client_target(args, env)
    return asyncio.run(
        chat(url, token, service=args.service, ca_file=ca_file, stdin=sys.stdin, out=sys.stdout)
    )


def cmd_up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Start the reference back-ends and the gateway. Ctrl-C, SIGTERM or SIGHUP stops the
    gateway first (it drains within DRAIN_TIMEOUT_S), then the back-ends; a second one
    kills what is still running."""
    config = _config(env)
    exe = [sys.executable, "-m", "gateway"]
    commands = [[*exe, "backend", name] for name in BACKENDS] + [[*exe, "serve"]]
    # A process group of their own: a Ctrl-C in the terminal reaches only this process,
    # which stops the children in order (the back-ends must outlive the gateway's drain).
    children = [subprocess.Popen(cmd, env=dict(env), process_group=0) for cmd in commands]
    for command, child in zip(commands, children, strict=True):
        log.info("started %s (pid %d)", " ".join(command[3:]), child.pid)
    signals: list[int] = []

    def hurry() -> bool:
        return len(signals) > 1

    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: signals.append(signum))
    code = 0
    try:
        while not signals and all(child.poll() is None for child in children):
            time.sleep(0.2)
        code = next((c.returncode for c in children if c.returncode not in (None, 0)), 0)
    finally:
        log.info("stopping the gateway (it drains for at most %d s)", config.drain_timeout_s)
        _stop(children[-1:], config.drain_timeout_s + GATEWAY_STOP_MARGIN_S, hurry)
        log.info("stopping the back-ends")
        _stop(children[:-1], BACKEND_STOP_S, hurry)
    return code


def _stop(
    children: list[subprocess.Popen[bytes]], timeout_s: float, hurry: Callable[[], bool]
) -> None:
    """SIGTERM to each child still running; wait for them up to ``timeout_s`` (or until
    ``hurry()``), then kill what is left."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(c.poll() is None for c in children) and time.monotonic() < deadline:
        if hurry():
            break
        time.sleep(0.1)
    for child in children:
        if child.poll() is None:
            log.warning("killing pid %d: it did not stop in time", child.pid)
            child.kill()
            child.wait()


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="WebSocket URL (default: wss://localhost:$PORT/ws)")
    p.add_argument("--token", help="bearer token (default: $TOKEN, else a fresh dev token)")
    p.add_argument("--sub", default=getpass.getuser(), help="subject of the dev token")
    p.add_argument("--service", default="", help="target service (default route when empty)")
    p.add_argument(
        "--cacert", default="certs/ca.pem", help="CA file for wss:// (default: certs/ca.pem)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dialog-gateway", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[..., int], str]] = {
        "up": (cmd_up, "start the gateway and the reference back-ends (what 'make run' starts)"),
        "serve": (cmd_serve, "run the gateway process"),
        "backend": (cmd_backend, "run a reference back-end: chat or tasks"),
        "certs": (cmd_certs, "create the development CA and certificates"),
        "token": (cmd_token, "print a short-lived development token"),
        "send": (cmd_send, "send one message over WebSocket and print the streamed reply"),
        "chat": (cmd_chat, "interactive WebSocket chat"),
        "dead-letters": (
            cmd_dead_letters,
            "list the messages that used up their delivery attempts (JSON lines), or replay one",
        ),
    }
    for name, (func, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if name == "backend":
            p.add_argument("name", choices=BACKENDS)
        elif name == "certs":
            p.add_argument("--dir", default="certs", help="output folder (default: certs)")
            p.add_argument("--force", action="store_true", help="replace existing certificates")
        elif name == "token":
            p.add_argument(
                "--sub", default=getpass.getuser(), help="subject (default: current user)"
            )
            p.add_argument(
                "--ttl", type=int, help="lifetime in seconds (default: TOKEN_TTL_S, 900)"
            )
            p.add_argument(
                "--scope", action="append", default=[], help="a scope to grant (repeatable)"
            )
        elif name == "send":
            p.add_argument("text", help="message text")
            _client_args(p)
        elif name == "dead-letters":
            p.add_argument("--replay", metavar="ENTRY_ID", help="queue this dead letter again")
            p.add_argument("--limit", type=int, default=100, help="at most this many (100)")
        elif name == "chat":
            _client_args(p)
            p.epilog = CHAT_HELP
            p.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = environment(Path.cwd())
    from gateway.workers import WORKER_ENV

    worker = env.get(WORKER_ENV)
    setup_logging(env.get("LOG_LEVEL", "INFO"), f"worker {worker}" if worker else "")
    try:
        return int(args.func(args, env))
    except KeyboardInterrupt:
        return 130
