"""Running one bounded load and reading what it measured into a ``Sample``.

Two load generators, both lighter than the systems they drive:
- ``dialog-load`` (tests/perf/go): WebSocket and gRPC, closed loop; it checks every reply
  (gRPC status included), and measures the CPU of the watched processes and its own over its
  measured window;
- ``wrk`` with a Lua script: HTTP/1.1 POSTs over keep-alive connections; this module reads the
  CPU of the processes around its measured run.
"""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.perf.procs import cpu_s, machine_busy_s

# Time allowed beyond a run's own duration (connecting, warm-up, closing) before it is killed.
RUN_GRACE_S = 60.0
REQUEST_TIMEOUT_S = 10


@dataclass(frozen=True)
class Timing:
    """How long each run lasts; ``max_count`` bounds the round trips measured too;
    ``fanout_messages`` is the number of messages of a fan-out run."""

    warmup_s: float
    measure_s: float
    max_count: int
    fanout_messages: int


@dataclass(frozen=True)
class Sample:
    """One measured run."""

    ok: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: Mapping[str, float]  # "gateway", "backend", "client"
    machine_pct: float  # busy CPU of the whole machine, % of one core
    first_error: str = ""
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def cpu(self, process: str) -> float:
        return self.cpu_s.get(process, math.nan)

    def cpu_pct(self, process: str) -> float:
        return self.cpu(process) / self.elapsed_s * 100 if self.elapsed_s > 0 else math.nan

    def other_pct(self) -> float:
        """Busy CPU of everything else on the machine, % of one core."""
        ours = sum(
            v
            for v in (self.cpu_pct(p) for p in ("gateway", "backend", "client"))
            if not math.isnan(v)
        )
        # /proc counts whole 10 ms ticks: clamp the rounding at 0.
        return max(0.0, self.machine_pct - ours)

    def cpu_us_per_message(self, process: str) -> float:
        return self.cpu(process) / self.ok * 1e6 if self.ok else math.nan


def _pids_arg(pids: Mapping[str, Sequence[int]]) -> str:
    return ",".join(f"{name}:{pid}" for name, group in pids.items() for pid in group)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def run_dialog_load(
    binary: Path, args: Sequence[str], pids: Mapping[str, Sequence[int]], timing: Timing
) -> Sample:
    """One ``dialog-load`` run; ``args`` give the mode, the target and the concurrency."""
    argv = [
        str(binary),
        *args,
        "-warmup",
        f"{timing.warmup_s}s",
        "-d",
        f"{timing.measure_s}s",
        "-n",
        str(timing.max_count),
        "-pids",
        _pids_arg(pids),
    ]
    busy0, t0 = machine_busy_s(), time.perf_counter()
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timing.warmup_s + timing.measure_s + RUN_GRACE_S,
        check=False,
    )
    machine_pct = (machine_busy_s() - busy0) / (time.perf_counter() - t0) * 100
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"dialog-load {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    out = json.loads(lines[-1])
    cpu = {name: float(v) for name, v in out.get("cpu_s", {}).items()}
    cpu["client"] = float(out["client_cpu_s"])
    return Sample(
        ok=int(out["ok"]),
        errors=int(out["errors"]),
        elapsed_s=float(out["elapsed_s"]),
        p50_ms=_num(out.get("p50_ms")),
        p99_ms=_num(out.get("p99_ms")),
        max_ms=_num(out.get("max_ms")),
        cpu_s=cpu,
        machine_pct=machine_pct,
        first_error=str(out.get("first_error", "")),
        extra={k: float(out[k]) for k in ("ttft_p50_ms", "ttft_p99_ms") if k in out},
    )


@dataclass
class _Window:
    """CPU of the watched processes, of this process's children and of the machine."""

    pids: Mapping[str, Sequence[int]]

    def __enter__(self) -> _Window:
        self._cpu0 = self._cpu()
        self._children0 = self._children()
        self._busy0 = machine_busy_s()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed_s = time.perf_counter() - self._t0
        cpu1 = self._cpu()
        self.cpu_s = {name: cpu1[name] - self._cpu0[name] for name in cpu1}
        self.cpu_s["client"] = self._children() - self._children0
        self.machine_pct = (machine_busy_s() - self._busy0) / self.elapsed_s * 100

    def _cpu(self) -> dict[str, float]:
        return {name: sum(cpu_s(pid) or 0.0 for pid in group) for name, group in self.pids.items()}

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else math.nan


def parse_wrk(text: str) -> tuple[int, int, float, float, float]:
    """Requests, errors, p50, p99 and max (ms) from ``wrk --latency`` output."""
    requests = re.search(r"(\d+) requests in", text)
    if requests is None:
        raise RuntimeError(f"wrk printed no result:\n{text[-800:]}")
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(int(v) for v in sockets.groups()) if sockets else 0
    return (
        int(requests.group(1)),
        errors,
        _ms(p50.group(1)) if p50 else math.nan,
        _ms(p99.group(1)) if p99 else math.nan,
        _ms(latency.group(3)) if latency else math.nan,
    )


def run_wrk(
    wrk: Path,
    url: str,
    script: Path,
    connections: int,
    pids: Mapping[str, Sequence[int]],
    timing: Timing,
    env: Mapping[str, str],
) -> Sample:
    """A warm-up run, then a measured ``wrk`` run (bounded by duration: wrk has no count)."""
    threads = str(min(2, connections))

    def wrk_run(duration_s: float, latency: bool) -> str:
        # wrk takes whole seconds only.
        seconds = max(1, math.ceil(duration_s))
        argv = [
            str(wrk),
            "-t",
            threads,
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            f"{REQUEST_TIMEOUT_S}s",
            "-s",
            str(script),
            *(["--latency"] if latency else []),
            url,
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=seconds + RUN_GRACE_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed: {(done.stdout + done.stderr).strip()[-800:]}")
        return done.stdout

    wrk_run(timing.warmup_s, latency=False)
    with _Window(pids) as window:
        text = wrk_run(timing.measure_s, latency=True)
    ok, errors, p50, p99, max_ms = parse_wrk(text)
    if ok <= errors:  # wrk prints zero latencies when nothing completed
        p50 = p99 = max_ms = math.nan
    return Sample(
        ok=ok - errors,
        errors=errors,
        elapsed_s=window.elapsed_s,
        p50_ms=p50,
        p99_ms=p99,
        max_ms=max_ms,
        cpu_s=window.cpu_s,
        machine_pct=window.machine_pct,
    )
