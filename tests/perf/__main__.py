"""``python -m tests.perf`` (``make bench``): start everything on loopback, measure, report.

Environment:
- ``BENCH_QUICK=1``: short runs, to check that everything works (the figures mean little);
- ``BENCH_ONLY=text``: only the rows whose label (path / system / C=n) contains ``text``;
- ``GO_GATEWAY_SRC``: the sources of the Go gateway (grpc-gateway + grpc-websocket-proxy)
  to build and measure against; without them, its rows are skipped.

Prints one table and writes ``tests/perf/results.md`` and ``tests/perf/results.png``. Every
process it starts is stopped by its PID when it ends, also on failure or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from tests.perf import record, report
from tests.perf.capacity import IdleResult, hold_idle, idle_rows, raise_file_limit
from tests.perf.loads import Sample, Timing
from tests.perf.procs import Processes
from tests.perf.scenarios import GATEWAY_VARIANTS, REDIS, Scenario, Systems, build, ws_target
from tests.perf.systems import (
    start_dialog,
    start_floor,
    start_go_gateway,
    start_nginx,
    start_redis,
)
from tests.perf.tools import prepare

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "results.md"
RESULTS_PNG = HERE / "results.png"
ROUNDS = 3
FULL = Timing(warmup_s=1.0, measure_s=2.0, max_count=2_000_000, fanout_messages=20)
QUICK = Timing(warmup_s=0.3, measure_s=1.0, max_count=200_000, fanout_messages=5)


def start_systems(procs: Processes, workdir: Path, systems: Systems) -> None:
    """Start every system the tools allow; record what could not start and why."""
    tools = systems.tools
    backend = "go" if tools.echo is not None else "python"
    if backend == "python":
        systems.skipped["Go echo back-end"] = (
            "not built: the gateway rows use the Python chat back-end, which may be the limit"
        )
    redis_url = ""
    if any(REDIS in value for env in GATEWAY_VARIANTS.values() for value in env.values()):
        redis_url = start_redis(procs, workdir / "redis")
    for i, (variant, env) in enumerate(GATEWAY_VARIANTS.items()):
        env = {name: value.replace(REDIS, redis_url) for name, value in env.items()}
        systems.gateways[variant] = start_dialog(
            procs, workdir / f"gateway-{i}", tools, backend_kind=backend, gateway_env=env
        )
    if backend == "go":
        systems.python_backend = start_dialog(
            procs, workdir / "gateway-python", tools, backend_kind="python", gateway_env={}
        )
    if tools.go_gateway is not None:
        systems.go_gateway = start_go_gateway(procs, tools.go_gateway)
    base = next(iter(systems.gateways.values()))
    if tools.nginx is not None and backend == "go":
        systems.nginx = start_nginx(
            procs, tools.nginx, workdir / "nginx", base.certs, base.backend_target, "chat"
        )
    elif tools.nginx is not None:
        systems.skipped["nginx"] = "needs the Go echo back-end (the echo.Echo service)"
    if backend == "go":
        systems.floor = start_floor(procs, base)


def measure(
    scenarios: list[Scenario], systems: Systems
) -> tuple[dict[Scenario, list[Sample]], list[str]]:
    """``ROUNDS`` rounds, interleaved so that drift on the machine touches every row alike."""
    results: dict[Scenario, list[Sample]] = {s: [] for s in scenarios}
    failures: list[str] = []
    total = len(scenarios) * ROUNDS
    done = 0
    for round_no in range(1, ROUNDS + 1):
        for sc in scenarios:
            done += 1
            print(f"bench: [{done}/{total}] round {round_no}: {sc.label}", flush=True)
            try:
                sample = sc.run(systems)
            except Exception as exc:  # one failed run is reported; the others go on
                failures.append(f"{sc.label}, round {round_no}: {exc}"[:600])
                continue
            results[sc].append(sample)
            if not sample.ok:
                failures.append(f"{sc.label}, round {round_no}: no round trip completed")
            if sample.errors:
                failures.append(
                    f"{sc.label}, round {round_no}: {sample.errors} errors, first: "
                    f"{sample.first_error or 'see the counts'}"[:600]
                )
    return results, failures


IDLE_LABEL = "idle WebSockets"
FIRST_TOKEN_INTRO = (
    "From the moment the Go echo back-end sends its first delta (stamped in its labels) to "
    "its arrival at the client, medians of the runs; added = the gateway's figure less the "
    "direct one at the same concurrency."
)
IDLE_INTRO = (
    "WebSockets opened and held open (one run; up to 10,000, within the open-file limit and "
    "the time allowed), and the memory (RSS) the server grew by while holding them; CPU "
    "µs/conn is the server's CPU while they opened (TLS, token, upgrade)."
)


def measure_idle(systems: Systems, count: int, open_within_s: float) -> list[IdleResult]:
    """Idle WebSockets held by Dialog Gateway, and by the Go gateway when it runs."""
    load = systems.tools.load
    if load is None or count == 0:
        systems.skipped[IDLE_LABEL] = "no Go load generator, or no file descriptors"
        return []
    out: list[IdleResult] = []
    gw = next(iter(systems.gateways.values()))
    args = ws_target(gw)
    print(f"bench: {count:,} idle WebSockets to Dialog Gateway", flush=True)
    out.append(hold_idle("Dialog Gateway", load, args, gw.pids["gateway"], count, open_within_s))
    if systems.go_gateway is not None:
        url = f"ws://127.0.0.1:{systems.go_gateway.http_port}/v1/chat?method=POST"
        print(f"bench: {count:,} idle WebSockets to the Go gateway", flush=True)
        out.append(
            hold_idle(
                "Go gateway",
                load,
                ["-url", url, "-frames", "echo"],
                systems.go_gateway.pids["gateway"],
                count,
                open_within_s,
            )
        )
    return out


def settings_lines(timing: Timing, quick: bool, skipped: Mapping[str, str]) -> list[str]:
    variants = ", ".join(
        f"{k or 'default'}: {dict(v) or 'no change'}" for k, v in GATEWAY_VARIANTS.items()
    )
    return [
        f"{ROUNDS} runs per row, interleaved; each run: {timing.warmup_s} s warm-up, then "
        f"{timing.measure_s} s or {timing.max_count:,} round trips measured"
        + (" (BENCH_QUICK: a smoke run)" if quick else ""),
        "127.0.0.1 only. Dialog Gateway: TLS on its public ports, mutual TLS to its back-end "
        "(the Go echo back-end of tests/perf/go unless marked), SQLite store in a temporary "
        f"directory, rate limits lifted; gateway variants: {variants}",
        "Load generators: tests/perf/go `dialog-load` (closed loop; WebSocket one user per "
        "socket, no compression; gRPC streams over one connection) and `wrk` (POST, one user, "
        "keep-alive connections, 2 threads)",
        "The Go gateway (grpc-gateway + grpc-websocket-proxy) and its echo back-end are "
        "plaintext: their rows carry no TLS cost",
        "nginx grpc_pass: TLS in, mutual TLS to the same Go echo back-end, worker_processes "
        "auto (its CPU is all its processes')",
        "direct: the same load generator to the back-end itself, over the same mutual TLS",
        "Python floor (tests/perf/floor): the gateway's libraries alone, over the same TLS: "
        "uvicorn + Starlette answering each frame with three, no back-end; a grpcio relay of "
        "raw bytes to the same Go echo back-end",
        "gw µs/msg: the gateway's (or the Go gateway's, nginx's, the floor's) CPU time per "
        "round trip",
    ] + ([f"skipped: {', '.join(skipped)}"] if skipped else [])


def publish(
    systems: Systems,
    *,
    quick: bool,
    started: datetime,
    results: dict[Scenario, list[Sample]],
    idle: list[IdleResult],
    failures: list[str],
) -> None:
    """Print the tables; write results.md and the plot."""
    table = report.rows(results)
    bottleneck = report.bottleneck_line(results)
    plot_error = report.plot(results, RESULTS_PNG)
    if plot_error:
        systems.skipped["plot"] = plot_error
    sections = [
        ("Time to first token", FIRST_TOKEN_INTRO, report.first_token_rows(results)),
        ("Idle WebSockets", IDLE_INTRO, idle_rows(idle)),
    ]
    sections = [(title, intro, rows) for title, intro, rows in sections if len(rows) > 1]
    print(f"\n{report.console_table(table)}\n\n{bottleneck}")
    for title, intro, rows in sections:
        print(f"\n{title}: {intro}\n{report.console_table(rows)}")
    for name, why in systems.skipped.items():
        print(f"skipped: {name}: {why}")
    for failure in failures:
        print(f"FAILED: {failure}")
    record.write(
        RESULTS_MD,
        started=started,
        settings=settings_lines(systems.timing, quick, systems.skipped),
        tools=systems.tools,
        table_md=report.markdown_table(table),
        bottleneck=bottleneck,
        sections=[(t, i, report.markdown_table(r)) for t, i, r in sections],
        skipped=systems.skipped,
        failures=failures,
        plot_file="" if plot_error else RESULTS_PNG.name,
    )
    plot_note = "" if plot_error else f" and {os.path.relpath(RESULTS_PNG)}"
    print(f"wrote {os.path.relpath(RESULTS_MD)}{plot_note}")


def interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run like Ctrl-C, so that the processes are stopped."""
    raise KeyboardInterrupt


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    only = os.environ.get("BENCH_ONLY", "")
    source = os.environ.get("GO_GATEWAY_SRC", "")
    started = datetime.now(UTC)
    signal.signal(signal.SIGTERM, interrupted)
    idle_count = min(1000, raise_file_limit()) if quick else raise_file_limit()
    tools = prepare(Path(source) if source else None)
    for note in tools.notes:
        print(f"bench: {note}", flush=True)
    systems = Systems(tools=tools, timing=QUICK if quick else FULL, skipped=dict(tools.skipped))
    if tools.load is None:
        systems.skipped["WebSocket and gRPC rows"] = "no Go load generator (needs golang-go)"
    if tools.wrk is None:
        systems.skipped["POST rows"] = "no wrk"
    workdir = Path(tempfile.mkdtemp(prefix="dialog-bench-"))
    failed = True
    try:
        with Processes(workdir / "logs") as procs:
            start_systems(procs, workdir, systems)
            scenarios = [s for s in build(systems) if only in s.label]
            t0 = time.monotonic()
            results, failures = measure(scenarios, systems)
            idle: list[IdleResult] = []
            if only in IDLE_LABEL:  # like a row's label
                idle = measure_idle(systems, idle_count, 20.0 if quick else 60.0)
            print(f"bench: measured in {time.monotonic() - t0:.0f} s", flush=True)
        failures += [
            f"{IDLE_LABEL}, {r.system}: {r.failed} failed, first: {r.first_error}"
            for r in idle
            if r.failed
        ]
        publish(
            systems, quick=quick, started=started, results=results, idle=idle, failures=failures
        )
        failed = bool(failures)
    except Exception:
        traceback.print_exc()
    finally:
        if failed:
            print(f"bench: logs kept in {workdir / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
