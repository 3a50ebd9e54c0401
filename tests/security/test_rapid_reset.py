"""HTTP/2 rapid reset (CVE-2023-44487) on the gRPC port.

A separate process (tests/security/rapid_reset.py) opens HTTP/2 connections and sends
HEADERS for a valid ``Gateway/Send`` call immediately followed by RST_STREAM, up to 5000
streams or 10 seconds. Meanwhile a normal ``grpc.aio`` client keeps calling ``Send``. The
gateway must stay up and every normal call must succeed. The round-trip latencies before,
during and after the attack are printed (run with ``-s`` to see them); nothing is asserted
about them.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import grpc

from dialog.v1 import gateway_pb2, gateway_pb2_grpc
from tests.security.clients import TIMEOUT_S, bearer, grpc_credentials
from tests.security.conftest import Recorder
from tests.support.stack import ROOT, Stack

MAX_STREAMS = 5000
MAX_S = 10.0
BASELINE_CALLS = 40
MAX_CALLS_DURING = 2000


async def send_once(stub: gateway_pb2_grpc.GatewayStub, token: str, text: str) -> float:
    """One ``Send`` round trip (ack and final reply), in milliseconds; raises on failure."""
    request = gateway_pb2.SendRequest()
    request.message.content.type = "text"
    request.message.content.text = text
    started = time.perf_counter()
    replies = [
        r.message.content.type
        async for r in stub.Send(request, metadata=bearer(token), timeout=TIMEOUT_S)
    ]
    assert replies == ["ack", "text"], replies
    return (time.perf_counter() - started) * 1000


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"n={len(ordered)} p50={statistics.median(ordered):.1f}ms p99={p99:.1f}ms"


async def test_rapid_reset_leaves_the_gateway_serving(guarded: Stack, attacker: Recorder) -> None:
    bystander = guarded.token(f"{attacker.user}-bystander")
    async with grpc.aio.secure_channel(guarded.grpc_target, grpc_credentials(guarded)) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        before = [await send_once(stub, bystander, "before") for _ in range(BASELINE_CALLS)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.security.rapid_reset",
            str(guarded.ports["grpc"]),
            str(guarded.ca_file),
            guarded.token(attacker.user),
            str(MAX_STREAMS),
            str(MAX_S),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        output = asyncio.create_task(proc.communicate())
        during: list[float] = []
        try:
            while not output.done() and len(during) < MAX_CALLS_DURING:
                during.append(await send_once(stub, bystander, "during"))
            stdout, stderr = await asyncio.wait_for(output, MAX_S + 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        after = [await send_once(stub, bystander, "after") for _ in range(BASELINE_CALLS)]
    assert proc.returncode == 0, stderr.decode()
    counts = json.loads(stdout)
    print(
        "\nrapid reset:",
        counts,
        f"\n  Send latency before: {figures(before)}",
        f"\n  Send latency during: {figures(during)}",
        f"\n  Send latency after:  {figures(after)}",
    )
    assert counts["streams"] > 0
    assert during, "no normal call completed while the attack ran"
    gateway = next(p for p in guarded.processes if p.name == "gateway")
    assert gateway.popen.poll() is None
    assert guarded.health_status() == 200
    assert attacker.messages() == []
