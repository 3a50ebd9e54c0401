"""Round trips to the echo chat back-end: directly, and through each gateway surface.

These are measurements, not pass/fail: the only assertions are sanity checks
(every round trip got its final reply, no errors). The table printed at the end
compares each surface with the direct back-end baseline measured in the same
run, at the same concurrency. Everything runs on 127.0.0.1; the load client is
this Python process, so its CPU is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol
from websockets.version import version as websockets_version

from dialog.backend.v1 import backend_pb2, backend_pb2_grpc
from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.stack import Stack

# Bounds: a run stops at MAX_ROUND_TRIPS or MAX_RUN_S, whichever comes first;
# each round trip has its own deadline. 9 scenarios x 3 rounds take about 75 s.
MAX_ROUND_TRIPS = 2000
MAX_RUN_S = 3.0
ROUNDS = 3
WARMUP_ROUND_TRIPS = 50  # per run, spread over the workers, not measured
ROUND_TRIP_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0

TEXT = "ping"
SUBPROTOCOL = Subprotocol("dialog.v1.json")
DIRECT_USER = "bench"
GRPC_USER = "bench-grpc"
HTTP_USER = "bench-http"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROCESSES = ("gateway", "backend", "client")

# A round trip sends one message with the given id and returns the
# time.perf_counter() at which its final reply arrived; it raises on anything
# else (an error reply, a wrong text, a failed call or stream).
RoundTrip = Callable[[str], Awaitable[float]]
Opener = Callable[[Stack, AsyncExitStack, int], Awaitable[list[RoundTrip]]]


class WrongReply(Exception):
    """A round trip ended without the expected final reply."""


_ids = itertools.count()
_run_prefix = uuid.uuid4().hex[:8]


def next_id() -> str:
    """A message id never used before in this run (the back-end deduplicates by id)."""
    return f"bench-{_run_prefix}-{next(_ids)}"


def is_final(kind: str, is_event: bool) -> bool:
    """docs/protocol.md, Replies: anything but an ack, a delta or an event is final."""
    return kind not in ("ack", "delta") and not is_event


def check_final(msg_id: str, reply_to: str, kind: str, text: str) -> None:
    if reply_to != msg_id or kind != "text" or text != TEXT:
        raise WrongReply(f"final for {msg_id}: reply_to={reply_to!r} {kind}={text[:80]!r}")


def user_text(msg_id: str) -> message_pb2.Message:
    msg = message_pb2.Message(id=msg_id, role=message_pb2.ROLE_USER)
    msg.content.type = "text"
    msg.content.text = TEXT
    return msg


# --- Clients, one opener per surface ---------------------------------------


class DirectStream:
    """One ``Backend.Converse`` stream shared by every in-flight message."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._pending: dict[str, asyncio.Future[message_pb2.Message]] = {}
        self._write_lock = asyncio.Lock()  # grpc.aio allows one write at a time
        self._reader = asyncio.create_task(self._read_replies(), name="bench-direct-reader")

    async def _read_replies(self) -> None:
        failure: BaseException = WrongReply("back-end stream ended")
        try:
            async for response in self._call:
                for m in response.messages:
                    if is_final(m.content.type, m.role == message_pb2.ROLE_EVENT):
                        waiter = self._pending.pop(m.context.reply_to, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(m)
        except grpc.aio.AioRpcError as exc:
            failure = WrongReply(f"back-end stream failed: {exc.code().name}")
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(failure)

    async def round_trip(self, msg_id: str) -> float:
        waiter = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = waiter
        try:
            async with self._write_lock:
                await self._call.write(backend_pb2.ConverseRequest(messages=[user_text(msg_id)]))
            final = await waiter
        finally:
            self._pending.pop(msg_id, None)
        arrived = time.perf_counter()
        check_final(msg_id, final.context.reply_to, final.content.type, final.content.text)
        return arrived

    async def aclose(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()
        try:
            await asyncio.wait_for(self._reader, CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._call.cancel()


async def open_direct(stack: Stack, exits: AsyncExitStack, concurrency: int) -> list[RoundTrip]:
    certs = stack.workdir / "certs"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "gateway-client-key.pem").read_bytes(),
        certificate_chain=(certs / "gateway-client.pem").read_bytes(),
    )
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{stack.ports['chat']}",
        creds,
        options=[("grpc.ssl_target_name_override", "chat")],
    )
    await exits.enter_async_context(channel)
    call = backend_pb2_grpc.BackendStub(channel).Converse(
        metadata=(("x-dialog-user", DIRECT_USER),)
    )
    stream = DirectStream(call)
    exits.push_async_callback(stream.aclose)
    return [stream.round_trip] * concurrency


async def grpc_send_round_trip(
    stub: gateway_pb2_grpc.GatewayStub, metadata: tuple[tuple[str, str], ...], msg_id: str
) -> float:
    call = stub.Send(gateway_pb2.SendRequest(message=user_text(msg_id)), metadata=metadata)
    arrived: float | None = None
    async for response in call:
        m = response.message
        if arrived is None and is_final(m.content.type, m.role == message_pb2.ROLE_EVENT):
            arrived = time.perf_counter()
            check_final(msg_id, m.context.reply_to, m.content.type, m.content.text)
    if arrived is None:
        raise WrongReply(f"Send {msg_id} ended without a final reply")
    return arrived


async def open_gateway_grpc(
    stack: Stack, exits: AsyncExitStack, concurrency: int
) -> list[RoundTrip]:
    creds = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    channel = grpc.aio.secure_channel(stack.grpc_target, creds)
    await exits.enter_async_context(channel)
    metadata = (("authorization", f"Bearer {stack.token(GRPC_USER)}"),)
    stub = gateway_pb2_grpc.GatewayStub(channel)
    return [partial(grpc_send_round_trip, stub, metadata)] * concurrency


async def ws_round_trip(ws: ClientConnection, msg_id: str) -> float:
    await ws.send(
        json.dumps({"id": msg_id, "role": "user", "content": {"type": "text", "text": TEXT}})
    )
    while True:
        frame = json.loads(await ws.recv())
        context, content = frame.get("context", {}), frame.get("content", {})
        kind = content.get("type", "")
        if context.get("reply_to") == msg_id and is_final(kind, frame.get("role") == "event"):
            arrived = time.perf_counter()
            check_final(msg_id, context["reply_to"], kind, content.get("text", ""))
            return arrived


async def open_websockets(stack: Stack, exits: AsyncExitStack, concurrency: int) -> list[RoundTrip]:
    round_trips: list[RoundTrip] = []
    for i in range(concurrency):
        # One user per socket: MAX_WS_CONN (25) bounds the sockets of one user.
        token = stack.token(f"bench-ws-{i}")
        ws = await exits.enter_async_context(
            connect(
                stack.ws_url,
                ssl=stack.ssl_context(),
                subprotocols=[SUBPROTOCOL],
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=ROUND_TRIP_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        )
        round_trips.append(partial(ws_round_trip, ws))
    return round_trips


async def http_round_trip(client: httpx.AsyncClient, msg_id: str) -> float:
    body = {"id": msg_id, "role": "user", "content": {"type": "text", "text": TEXT}}
    response = await client.post("/messages", json=body)
    arrived = time.perf_counter()
    if response.status_code != httpx.codes.OK:
        raise WrongReply(f"POST /messages {response.status_code}: {response.text[:200]}")
    final = response.json()["replies"][-1]
    content = final["content"]
    check_final(msg_id, final["context"]["reply_to"], content["type"], content.get("text", ""))
    return arrived


async def open_http(stack: Stack, exits: AsyncExitStack, concurrency: int) -> list[RoundTrip]:
    headers = {"Authorization": f"Bearer {stack.token(HTTP_USER)}"}
    round_trips: list[RoundTrip] = []
    for _ in range(concurrency):
        # One HTTP/1.1 keep-alive connection per concurrent client.
        client = httpx.AsyncClient(
            base_url=stack.base_url,
            verify=stack.ssl_context(),
            headers=headers,
            timeout=ROUND_TRIP_TIMEOUT_S,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        await exits.enter_async_context(client)
        round_trips.append(partial(http_round_trip, client))
    return round_trips


@dataclass(frozen=True)
class Scenario:
    surface: str
    detail: str
    concurrency: int
    open: Opener

    @property
    def is_direct(self) -> bool:
        return self.open is open_direct

    @property
    def name(self) -> str:
        return f"{self.surface}, {self.detail}"

    @property
    def label(self) -> str:
        return f"{self.surface} C={self.concurrency}"


SCENARIOS = (
    Scenario("direct Backend.Converse", "1 stream", 1, open_direct),
    Scenario("direct Backend.Converse", "1 stream", 8, open_direct),
    Scenario("direct Backend.Converse", "1 stream", 32, open_direct),
    Scenario("gateway gRPC Send", "1 channel", 1, open_gateway_grpc),
    Scenario("gateway gRPC Send", "1 channel", 32, open_gateway_grpc),
    Scenario("gateway WebSocket", "C sockets", 1, open_websockets),
    Scenario("gateway WebSocket", "C sockets", 32, open_websockets),
    Scenario("gateway HTTP POST /messages", "C conns", 1, open_http),
    Scenario("gateway HTTP POST /messages", "C conns", 8, open_http),
)


# --- Measuring ---------------------------------------------------------------


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process and all its threads (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float | None:
    """CPU seconds all cores spent busy since boot (Linux /proc/stat), for "other" load."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    ticks = [int(v) for v in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float | None]:
    snapshot = {name: process_cpu_s(pid) for name, pid in pids.items()}
    snapshot["client"] = time.process_time()
    snapshot["machine"] = machine_busy_s()
    return snapshot


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class RunStats:
    round_trips: int
    errors: tuple[str, ...]
    wall_s: float
    latencies_s: tuple[float, ...]  # sorted
    cpu_s: Mapping[str, float | None]

    @property
    def throughput(self) -> float:
        return self.round_trips / self.wall_s

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000 if self.latencies_s else math.nan

    def cpu_us_per_rt(self, process: str) -> float:
        cpu = self.cpu_s.get(process)
        return math.nan if cpu is None or not self.round_trips else cpu / self.round_trips * 1e6

    def cpu_pct(self, process: str) -> float:
        cpu = self.cpu_s.get(process)
        return math.nan if cpu is None else cpu / self.wall_s * 100

    def other_pct(self) -> float:
        """Busy CPU of everything else on the machine (idle back-end, other jobs), % of a core."""
        machine = self.cpu_pct("machine")
        # /proc counts whole 10 ms ticks, process_time() does not: clamp the rounding at 0.
        return max(0.0, machine - sum(self.cpu_pct(p) for p in PROCESSES))


async def drive(
    round_trips: Sequence[RoundTrip], max_count: int, max_s: float
) -> tuple[list[float], list[str]]:
    """One closed-loop worker per round trip, until ``max_count`` or ``max_s``."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = itertools.count()
    deadline = time.perf_counter() + max_s

    async def worker(round_trip: RoundTrip) -> None:
        while time.perf_counter() < deadline and next(issued) < max_count:
            msg_id = next_id()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(ROUND_TRIP_TIMEOUT_S):
                    arrived = await round_trip(msg_id)
            except Exception as exc:  # counted, shown and asserted on after the table
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                latencies.append(arrived - started)

    async with asyncio.TaskGroup() as workers:
        for i, round_trip in enumerate(round_trips):
            workers.create_task(worker(round_trip), name=f"bench-worker-{i}")
    return latencies, errors


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


async def measure(stack: Stack, scenario: Scenario, pids: Mapping[str, int]) -> RunStats:
    """Open the clients, warm up, then one measured run; clients are closed after."""
    async with AsyncExitStack() as exits:
        round_trips = await scenario.open(stack, exits, scenario.concurrency)
        _, warmup_errors = await drive(round_trips, WARMUP_ROUND_TRIPS, ROUND_TRIP_TIMEOUT_S)
        before = cpu_snapshot(pids)
        started = time.perf_counter()
        latencies, errors = await drive(round_trips, MAX_ROUND_TRIPS, MAX_RUN_S)
        wall_s = time.perf_counter() - started
        after = cpu_snapshot(pids)
    cpu_s = {name: cpu_delta(before[name], after[name]) for name in after}
    return RunStats(
        round_trips=len(latencies),
        errors=tuple(warmup_errors + errors),
        wall_s=wall_s,
        latencies_s=tuple(sorted(latencies)),
        cpu_s=cpu_s,
    )


# --- Reporting -----------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[RunStats], float]
    digits: int


COLUMNS = (
    Column("n/run", lambda r: r.round_trips, 0),
    Column("rt/s", lambda r: r.throughput, 0),
    Column("p50 ms", lambda r: r.latency_ms(0.50), 2),
    Column("p99 ms", lambda r: r.latency_ms(0.99), 2),
    Column("max ms", lambda r: r.latency_ms(1.0), 1),
    Column("gw µs/rt", lambda r: r.cpu_us_per_rt("gateway"), 0),
    Column("be µs/rt", lambda r: r.cpu_us_per_rt("backend"), 0),
    Column("cl µs/rt", lambda r: r.cpu_us_per_rt("client"), 0),
    Column("gw %", lambda r: r.cpu_pct("gateway"), 0),
    Column("be %", lambda r: r.cpu_pct("backend"), 0),
    Column("cl %", lambda r: r.cpu_pct("client"), 0),
    Column("other %", lambda r: r.other_pct(), 0),
)
RATIO_HEADERS = ("rt/s÷direct", "p50÷direct")


def num(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def median_of(runs: Sequence[RunStats], value: Callable[[RunStats], float]) -> float:
    return statistics.median(value(r) for r in runs)


def spread(runs: Sequence[RunStats], column: Column) -> str:
    values = [column.value(r) for r in runs]
    return f"{num(min(values), column.digits)}-{num(max(values), column.digits)}"


def baseline_for(scenario: Scenario) -> Scenario | None:
    return next(
        (s for s in SCENARIOS if s.is_direct and s.concurrency == scenario.concurrency), None
    )


def ratios(results: Mapping[Scenario, list[RunStats]], scenario: Scenario) -> tuple[str, str]:
    """Median throughput and p50 of ``scenario`` over those of the direct baseline."""
    base = baseline_for(scenario)
    if base is None or base not in results:
        return "n/a", "n/a"
    runs, base_runs = results[scenario], results[base]
    rt = median_of(runs, lambda r: r.throughput) / median_of(base_runs, lambda r: r.throughput)
    p50 = median_of(runs, lambda r: r.latency_ms(0.5)) / median_of(
        base_runs, lambda r: r.latency_ms(0.5)
    )
    return f"{rt:.2f}x", f"{p50:.2f}x"


def peak_of(values: Iterable[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return max(known) if known else math.nan


def bottleneck_line(results: Mapping[Scenario, list[RunStats]]) -> str:
    """Which process was busiest through the gateway, and whether the machine was full."""
    busiest_in: dict[str, list[str]] = {p: [] for p in PROCESSES}
    peak = dict.fromkeys(PROCESSES, 0.0)
    for scenario, runs in results.items():
        pct = {p: median_of(runs, partial(RunStats.cpu_pct, process=p)) for p in PROCESSES}
        known = {p: v for p, v in pct.items() if not math.isnan(v)}
        if scenario.is_direct or not known:
            continue
        busiest_in[max(known, key=known.__getitem__)].append(scenario.label)
        for p, v in known.items():
            peak[p] = max(peak[p], v)
    gateway_scenarios = sum(len(labels) for labels in busiest_in.values())
    top = max(PROCESSES, key=lambda p: (len(busiest_in[p]), peak[p]))
    exceptions = "; ".join(
        f"the {p} in {', '.join(labels)}" for p, labels in busiest_in.items() if p != top and labels
    )
    machine_peak = peak_of(
        median_of(runs, lambda r: r.cpu_pct("machine")) for runs in results.values()
    )
    other_peak = peak_of(median_of(runs, lambda r: r.other_pct()) for runs in results.values())
    cores = os.cpu_count() or 1
    line = (
        f"Likely bottleneck: the {top} process, the busiest in {len(busiest_in[top])} of "
        f"{gateway_scenarios} gateway scenarios (up to {peak[top]:.0f}% of one core; one "
        f"asyncio event loop tops out near 100%)"
        + (f"; busiest elsewhere: {exceptions}." if exceptions else ".")
    )
    if not math.isnan(machine_peak):
        line += (
            f" The machine's {cores} CPUs were up to {machine_peak:.0f}% busy of {cores * 100}%"
            f" (other processes up to {other_peak:.0f}%)"
            + (", so the processes compete for cores." if machine_peak >= 85 * cores else ".")
        )
    return line + " The Python load client is the measuring process itself (cl columns)."


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def render(results: Mapping[Scenario, list[RunStats]]) -> str:
    rows: list[list[str]] = [["scenario", "C", *(c.header for c in COLUMNS), *RATIO_HEADERS]]
    for scenario, runs in results.items():
        medians = [num(median_of(runs, c.value), c.digits) for c in COLUMNS]
        rows.append(
            [scenario.name, str(scenario.concurrency), *medians, *ratios(results, scenario)]
        )
        rows.append(["", "", *(spread(runs, c) for c in COLUMNS), "", ""])
    table = aligned(rows)
    rule = max(len(line) for line in table)
    versions = (
        f"Python {sys.version.split()[0]}, grpcio {grpc.__version__}, "
        f"websockets {websockets_version}, httpx {httpx.__version__}"
    )
    return "\n".join(
        [
            "",
            "=" * rule,
            "ROUND-TRIP BENCHMARK: measurements, not pass/fail (no timing is asserted).",
            f"127.0.0.1 only; TLS on every hop (mTLS to the back-end); echo back-end; message "
            f"{TEXT!r} (1 delta, then the final reply). {ROUNDS} runs per scenario, "
            f"interleaved; each run: {WARMUP_ROUND_TRIPS} warm-up round trips, then "
            f"<= {MAX_ROUND_TRIPS} or {MAX_RUN_S} s measured.",
            f"Machine: {os.cpu_count()} CPUs; {versions}; measuring process pid {os.getpid()}.",
            bottleneck_line(results),
            "Row 1: median of the runs; row 2: min-max. latency = send -> final reply at the "
            "client; rt/s = completed round trips / wall time; µs/rt = CPU (user+sys) per "
            "round trip of the gateway (gw), the chat back-end (be) and this client (cl); "
            "% = of one core; other % = the rest of the machine.",
            f"÷ direct = median over the direct baseline at the same C in this run. Users: "
            f"direct x-dialog-user={DIRECT_USER!r}; gRPC {GRPC_USER!r} and HTTP {HTTP_USER!r} "
            f"one user each; WebSocket one user per socket (MAX_WS_CONN), permessage-deflate as "
            f"negotiated by default. gRPC Send is one call per message.",
            "-" * rule,
            *table,
            "=" * rule,
        ]
    )


# --- The benchmark -------------------------------------------------------------


@pytest.mark.timeout(300)  # a backstop: the bounds above keep the run near 75 s
async def test_roundtrip_benchmark(bench_stack: Stack) -> None:
    by_name = {p.name: p.popen for p in bench_stack.processes}
    pids = {"gateway": by_name["gateway"].pid, "backend": by_name["chat"].pid}
    results: dict[Scenario, list[RunStats]] = {s: [] for s in SCENARIOS}
    # Rounds are interleaved so that drift on the machine touches every scenario alike.
    for _ in range(ROUNDS):
        for scenario in SCENARIOS:
            results[scenario].append(await measure(bench_stack, scenario, pids))

    print(render(results))

    errors = [f"{s.label}: {e}" for s, runs in results.items() for r in runs for e in r.errors]
    assert not errors, f"{len(errors)} round trips failed, first: {errors[:5]}"
    assert all(r.round_trips > 0 for runs in results.values() for r in runs)
    for name, popen in by_name.items():
        assert popen.poll() is None, f"{name} exited during the benchmark"
