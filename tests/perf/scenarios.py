"""What is measured: each scenario is one path, one system and one concurrency.

Every Dialog Gateway scenario runs once per entry of ``GATEWAY_VARIANTS`` (a gateway
environment each), next to its baselines measured in the same run:
- direct: the same load generator talking to the back-end itself, over the same mutual TLS;
- the Go gateway (grpc-gateway + grpc-websocket-proxy) with its Go echo back-end, same load
  generator, same text;
- nginx ``grpc_pass`` with TLS, for the transparent gRPC proxy path, in front of the same Go
  echo back-end as the gateway.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.perf.loads import Sample, Timing, run_dialog_load, run_wrk
from tests.perf.systems import DialogSystem, GoGateway, NginxProxy, PythonFloor
from tests.perf.tools import Tools

# One line per gateway configuration measured; each starts its own gateway (with the Go echo
# back-end) and runs every gateway scenario. ``REDIS`` in a value stands for the URL of a
# redis-server the run starts (WORKERS > 1 needs it); CPU counts every worker.
REDIS = "{redis}"
GATEWAY_VARIANTS: Mapping[str, Mapping[str, str]] = {
    "": {},
    "Redis": {"REDIS_URL": REDIS},
    "Redis, WORKERS=2": {"REDIS_URL": REDIS, "WORKERS": "2"},
}
TEXT = "ping"  # one word: the echo back-ends answer one delta, then the final reply
WRK_DIR = Path(__file__).resolve().parent / "wrk"


class Role(enum.Enum):
    GATEWAY = "Dialog Gateway"
    DIRECT = "direct"
    PEER = "peer"
    FLOOR = "Python floor"  # tests/perf/floor: the gateway's libraries doing nothing else


class Surface(enum.Enum):
    """The paths measured, in the order of the table and the plot."""

    WS = "WebSocket round trip"
    POST = "POST /messages"
    SEND = "gRPC Gateway.Send"
    CONVERSE = "gRPC Gateway.Converse"
    DIRECT = "direct Backend.Converse (baseline of the paths above)"
    UNARY = "gRPC proxy, unary (echo.Echo/Say)"
    BIDI = "gRPC proxy, bidi stream (echo.Echo/Chat)"
    SSE = "SSE fan-out: C subscribers of one user, rt = one delivery"


# Message paths compare with the direct Backend.Converse rows at the same concurrency; the
# proxy paths have their own direct rows.
DIRECT_OF = {
    Surface.WS: Surface.DIRECT,
    Surface.POST: Surface.DIRECT,
    Surface.SEND: Surface.DIRECT,
    Surface.CONVERSE: Surface.DIRECT,
    Surface.UNARY: Surface.UNARY,
    Surface.BIDI: Surface.BIDI,
}


@dataclass
class Systems:
    """What is running, and what was skipped (with the reason)."""

    tools: Tools
    timing: Timing
    gateways: dict[str, DialogSystem] = field(default_factory=dict)  # by variant
    python_backend: DialogSystem | None = None
    go_gateway: GoGateway | None = None
    nginx: NginxProxy | None = None
    floor: PythonFloor | None = None
    skipped: dict[str, str] = field(default_factory=dict)


Runner = Callable[[Systems], Sample]


@dataclass(frozen=True)
class Scenario:
    path: Surface
    system: str  # what the row shows: "Dialog Gateway", "direct", "Go gateway", …
    role: Role
    concurrency: int
    run: Runner = field(compare=False, hash=False)
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.path.value} / {self.system} / C={self.concurrency}"


# --- Runners ---------------------------------------------------------------------


def _load(systems: Systems, args: list[str], pids: Mapping[str, list[int]]) -> Sample:
    assert systems.tools.load is not None
    return run_dialog_load(systems.tools.load, [*args, "-text", TEXT], pids, systems.timing)


def _users_args(gw: DialogSystem) -> list[str]:
    """The CA that signed the gateway's certificate, and its users' tokens."""
    return ["-ca", str(gw.certs / "ca.pem"), "-tokens", str(gw.tokens_file)]


def _gateway_grpc_args(gw: DialogSystem) -> list[str]:
    return ["-target", gw.stack.grpc_target, *_users_args(gw)]


def _mtls_args(gw: DialogSystem) -> list[str]:
    """The gateway's own client certificate, to reach the back-end directly."""
    return [
        "-target",
        gw.backend_target,
        "-server-name",
        "chat",
        "-ca",
        str(gw.certs / "ca.pem"),
        "-cert",
        str(gw.certs / "gateway-client.pem"),
        "-key",
        str(gw.certs / "gateway-client-key.pem"),
    ]


def ws_target(gw: DialogSystem) -> list[str]:
    """dialog-load's arguments naming the gateway's WebSocket: URL, CA and users' tokens."""
    return ["-url", gw.stack.ws_url, *_users_args(gw)]


def gateway_ws(gw: DialogSystem, c: int) -> Runner:
    args = ["-mode", "ws", *ws_target(gw), "-c", str(c)]
    return lambda s: _load(s, args, gw.pids)


def direct_converse(gw: DialogSystem, c: int) -> Runner:
    args = ["-mode", "converse", *_mtls_args(gw), "-c", str(c)]
    return lambda s: _load(s, args, {"backend": gw.pids["backend"]})


def gateway_grpc(gw: DialogSystem, mode: str, c: int, method_path: str = "") -> Runner:
    args = ["-mode", mode, *_gateway_grpc_args(gw), "-c", str(c)]
    if method_path:
        args += ["-path", method_path]
    return lambda s: _load(s, args, gw.pids)


def direct_echo(gw: DialogSystem, mode: str, c: int, method_path: str) -> Runner:
    args = ["-mode", mode, *_mtls_args(gw), "-path", method_path, "-c", str(c)]
    return lambda s: _load(s, args, {"backend": gw.pids["backend"]})


def nginx_echo(gw: DialogSystem, mode: str, c: int, method_path: str) -> Runner:
    def run(s: Systems) -> Sample:
        assert s.nginx is not None
        args = [
            "-mode",
            mode,
            "-target",
            f"localhost:{s.nginx.port}",
            "-ca",
            str(gw.certs / "ca.pem"),
            "-path",
            method_path,
            "-c",
            str(c),
        ]
        return _load(s, args, {**s.nginx.pids, "backend": gw.pids["backend"]})

    return run


def floor_ws(gw: DialogSystem, c: int) -> Runner:
    def run(s: Systems) -> Sample:
        assert s.floor is not None
        args = ["-mode", "ws", "-url", s.floor.ws_url, *_users_args(gw), "-c", str(c)]
        return _load(s, args, {"gateway": [s.floor.ws.popen.pid]})

    return run


def floor_relay(gw: DialogSystem, mode: str, c: int, method_path: str) -> Runner:
    def run(s: Systems) -> Sample:
        assert s.floor is not None
        args = ["-mode", mode, "-target", s.floor.relay_target, "-ca", str(gw.certs / "ca.pem")]
        args += ["-path", method_path, "-c", str(c)]
        pids = {"gateway": [s.floor.relay.popen.pid], "backend": gw.pids["backend"]}
        return _load(s, args, pids)

    return run


def peer_ws(c: int) -> Runner:
    def run(s: Systems) -> Sample:
        assert s.go_gateway is not None
        url = f"ws://127.0.0.1:{s.go_gateway.http_port}/v1/chat?method=POST"
        args = ["-mode", "ws", "-frames", "echo", "-url", url, "-c", str(c)]
        return _load(s, args, s.go_gateway.pids)

    return run


def gateway_post(gw: DialogSystem, c: int) -> Runner:
    def run(s: Systems) -> Sample:
        assert s.tools.wrk is not None
        token = gw.tokens_file.read_text().split()[0]
        return run_wrk(
            s.tools.wrk,
            f"{gw.stack.base_url}/messages",
            WRK_DIR / "messages.lua",
            c,
            gw.pids,
            s.timing,
            {"BENCH_TOKEN": token, "BENCH_TEXT": TEXT},
        )

    return run


def gateway_sse(gw: DialogSystem, c: int) -> Runner:
    def run(s: Systems) -> Sample:
        args = [
            "-mode",
            "sse",
            "-base",
            gw.stack.base_url,
            "-ca",
            str(gw.certs / "ca.pem"),
            "-tokens",
            str(gw.fanout_token_file),
            "-c",
            str(c),
            "-messages",
            str(s.timing.fanout_messages),
        ]
        return _load(s, args, gw.pids)

    return run


def peer_post(c: int) -> Runner:
    def run(s: Systems) -> Sample:
        assert s.tools.wrk is not None and s.go_gateway is not None
        url = f"http://127.0.0.1:{s.go_gateway.http_port}/v1/say"
        return run_wrk(
            s.tools.wrk,
            url,
            WRK_DIR / "say.lua",
            c,
            s.go_gateway.pids,
            s.timing,
            {"BENCH_TEXT": TEXT},
        )

    return run


# --- The list ----------------------------------------------------------------------

WS_C = (1, 100)
POST_C = (1, 32)
GRPC_C = (1, 32)
PROXY_C = (1, 32)
FANOUT_C = 1000
DIRECT_C = sorted({*WS_C, *POST_C, *GRPC_C})
SAY, CHAT = "/echo.Echo/Say", "/echo.Echo/Chat"
FLOOR_WS = "Python floor: uvicorn + Starlette, 3 frames per message, nothing else"
FLOOR_RELAY = "Python floor: grpcio relay, nothing else"


def gateway_name(variant: str) -> str:
    return f"{Role.GATEWAY.value}, {variant}" if variant else Role.GATEWAY.value


def _gateways(
    systems: Systems, path: Surface, c: int, runner: Callable[[DialogSystem], Runner]
) -> list[Scenario]:
    """One row per gateway variant."""
    return [
        Scenario(path, gateway_name(variant), Role.GATEWAY, c, runner(gw))
        for variant, gw in systems.gateways.items()
    ]


def message_paths(systems: Systems) -> list[Scenario]:
    """WebSocket, POST, Send and Converse, with the Go gateway where it has the path."""
    out: list[Scenario] = []
    peer = systems.go_gateway is not None
    if systems.tools.load is not None:
        for c in WS_C:
            out += _gateways(systems, Surface.WS, c, partial(gateway_ws, c=c))
            if peer:
                out.append(Scenario(Surface.WS, "Go gateway", Role.PEER, c, peer_ws(c)))
            if systems.floor is not None:
                base = next(iter(systems.gateways.values()))
                out.append(Scenario(Surface.WS, FLOOR_WS, Role.FLOOR, c, floor_ws(base, c)))
        if systems.python_backend is not None:
            c, py = max(WS_C), systems.python_backend
            out.append(
                Scenario(
                    Surface.WS,
                    "Dialog Gateway + Python chat back-end",
                    Role.GATEWAY,
                    c,
                    gateway_ws(py, c),
                    note="python",
                )
            )
    if systems.tools.wrk is not None:
        for c in POST_C:
            out += _gateways(systems, Surface.POST, c, partial(gateway_post, c=c))
            if peer:
                out.append(
                    Scenario(Surface.POST, "Go gateway, POST /v1/say", Role.PEER, c, peer_post(c))
                )
    if systems.tools.load is not None:
        for path, mode in ((Surface.SEND, "gw-send"), (Surface.CONVERSE, "gw-converse")):
            for c in GRPC_C:
                out += _gateways(systems, path, c, partial(gateway_grpc, mode=mode, c=c))
    return out


def baselines_and_proxy(systems: Systems) -> list[Scenario]:
    """The direct Backend.Converse rows; the transparent proxy against nginx and direct."""
    base = next(iter(systems.gateways.values()), None)
    if systems.tools.load is None or base is None:
        return []
    out = [
        Scenario(Surface.DIRECT, "Go echo back-end", Role.DIRECT, c, direct_converse(base, c))
        for c in DIRECT_C
    ]
    if systems.python_backend is not None:
        c = max(WS_C)
        out.append(
            Scenario(
                Surface.DIRECT,
                "Python chat back-end",
                Role.DIRECT,
                c,
                direct_converse(systems.python_backend, c),
                note="python",
            )
        )
    for path, mode, method in ((Surface.UNARY, "unary", SAY), (Surface.BIDI, "bidi", CHAT)):
        for c in PROXY_C:
            out += _gateways(
                systems, path, c, partial(gateway_grpc, mode=mode, c=c, method_path=method)
            )
            if systems.nginx is not None:
                out.append(
                    Scenario(
                        path, "nginx grpc_pass", Role.PEER, c, nginx_echo(base, mode, c, method)
                    )
                )
            if systems.floor is not None:
                runner = floor_relay(base, mode, c, method)
                out.append(Scenario(path, FLOOR_RELAY, Role.FLOOR, c, runner))
            out.append(Scenario(path, "direct", Role.DIRECT, c, direct_echo(base, mode, c, method)))
    return out


def build(systems: Systems) -> list[Scenario]:
    """Every scenario whose systems are running, in table order."""
    out = message_paths(systems) + baselines_and_proxy(systems)
    if systems.tools.load is not None:
        out += _gateways(systems, Surface.SSE, FANOUT_C, partial(gateway_sse, c=FANOUT_C))
    return out
