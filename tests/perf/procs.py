"""Processes the benchmark starts, and what it reads about them and the machine (Linux /proc).

Every process is started through ``Processes``, which remembers its PID and stops exactly
that PID when the benchmark ends, on failure too.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.stack import Process, wait_until

CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 10.0


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process and all its threads, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    """The direct children of a process (for nginx's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to see the machine's load."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    ticks = [int(v) for v in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def command_version(argv: Sequence[str], pattern: str = r"\S+") -> str:
    """The first match of ``pattern`` in what ``argv`` prints (stdout or stderr), or ''."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(0) if match else ""


@dataclass
class Processes(AbstractContextManager["Processes"]):
    """Processes started for the benchmark; leaving the context stops each by its PID."""

    logs: Path

    def __post_init__(self) -> None:
        self.started: list[Process] = []
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout_s: float = 20.0,
    ) -> Process:
        """Start ``argv``, logging to ``<logs>/<name>.log``; wait until ``ready`` holds."""
        log_path = self.logs / f"{name}.log"
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            process_group=0,  # a Ctrl-C of the benchmark reaches it only through stop()
        )
        proc = Process(name, popen, log_path)
        self.started.append(proc)
        if ready is not None:
            wait_until(lambda: ready() or popen.poll() is not None, ready_timeout_s, name)
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited at start:\n{proc.log()[-2000:]}")
        return proc

    def adopt(self, proc: Process) -> None:
        """Stop ``proc`` with the others (a process started by tests.support.stack)."""
        self.started.append(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            stop(proc)
        self.started.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def stop(proc: Process) -> None:
    """SIGTERM by PID, then SIGKILL after ``STOP_TIMEOUT_S``."""
    if proc.popen.poll() is not None:
        return
    proc.popen.send_signal(signal.SIGTERM)
    try:
        proc.popen.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait()


def python_version() -> str:
    return sys.version.split()[0]
