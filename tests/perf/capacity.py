"""Idle WebSocket connections: how many a gateway holds, and its memory per connection."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.perf.loads import RUN_GRACE_S
from tests.perf.procs import cpu_s, rss_kib

MAX_IDLE = 10_000
FD_RESERVE = 500  # descriptors kept for everything else in a process
SETTLE_S = 0.5  # after the last connection opens, before memory is read


@dataclass(frozen=True)
class IdleResult:
    system: str
    asked: int
    opened: int
    failed: int
    open_s: float
    rss_before_kib: int
    rss_held_kib: int
    open_cpu_s: float  # the gateway's CPU while the connections opened
    first_error: str = ""

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_held_kib - self.rss_before_kib) / self.opened if self.opened else math.nan

    @property
    def open_cpu_us_per_connection(self) -> float:
        return self.open_cpu_s / self.opened * 1e6 if self.opened else math.nan


def raise_file_limit() -> int:
    """Raise this process's open-file limit (inherited by what it starts) to its hard limit;
    the idle connections one process may hold within it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(0, min(MAX_IDLE, soft - FD_RESERVE))


def hold_idle(
    system: str,
    load: Path,
    args: Sequence[str],
    gateway_pids: Sequence[int],
    count: int,
    open_within_s: float,
    hold_s: float = 2.0,
) -> IdleResult:
    """Open ``count`` WebSockets with ``dialog-load -mode idle``, read the gateway's memory
    while they are held, then close them."""
    argv = [
        str(load),
        "-mode",
        "idle",
        *args,
        "-c",
        str(count),
        "-open-within",
        f"{open_within_s}s",
        "-hold",
        f"{hold_s}s",
    ]
    rss_before = sum(rss_kib(pid) or 0 for pid in gateway_pids)
    cpu_before = sum(cpu_s(pid) or 0.0 for pid in gateway_pids)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            assert p.stdout is not None
            line = p.stdout.readline()  # printed once the connections are open
            cpu_open = sum(cpu_s(pid) or 0.0 for pid in gateway_pids) - cpu_before
            time.sleep(SETTLE_S)
            rss_held = sum(rss_kib(pid) or 0 for pid in gateway_pids)
            p.wait(timeout=hold_s + RUN_GRACE_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if not line:
            raise RuntimeError(f"dialog-load idle failed: {p.stderr.read() if p.stderr else ''}")
    out = json.loads(line)
    return IdleResult(
        system=system,
        asked=count,
        opened=int(out["opened"]),
        failed=int(out["failed"]),
        open_s=float(out["open_s"]),
        rss_before_kib=rss_before,
        rss_held_kib=rss_held,
        open_cpu_s=cpu_open,
        first_error=str(out.get("first_error", "")),
    )


def idle_rows(results: Sequence[IdleResult]) -> list[list[str]]:
    header = [
        "system",
        "asked",
        "opened",
        "failed",
        "open s",
        "RSS before MiB",
        "RSS held MiB",
        "KiB/conn",
        "CPU µs/conn open",
    ]
    rows = [header]
    for r in results:
        rows.append(
            [
                r.system,
                f"{r.asked:,}",
                f"{r.opened:,}",
                f"{r.failed:,}",
                f"{r.open_s:.1f}",
                f"{r.rss_before_kib / 1024:.0f}",
                f"{r.rss_held_kib / 1024:.0f}",
                f"{r.kib_per_connection:.1f}",
                f"{r.open_cpu_us_per_connection:,.0f}",
            ]
        )
    return rows
