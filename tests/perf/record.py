"""``results.md``: a dated record of one run, with the machine it ran on."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tests.perf.procs import command_version, cpu_model, python_version
from tests.perf.tools import Tools


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_lines(tools: Tools) -> list[str]:
    """Cores, CPU, kernel and the versions of everything measured or measuring."""
    load1, load5, _ = os.getloadavg()
    lines = [
        f"- {os.cpu_count()} CPUs, {cpu_model()}; Linux {platform.release()}; "
        f"load average {load1:.2f} (1 min), {load5:.2f} (5 min) when the run started",
        f"- Python {python_version()}; grpcio {package_version('grpcio')}; websockets "
        f"{package_version('websockets')}; uvicorn {package_version('uvicorn')}; uvloop "
        f"{package_version('uvloop')}",
    ]
    others = [
        command_version(["go", "version"], r"go\d+\.\d+(\.\d+)?"),
        "wrk " + command_version([str(tools.wrk), "--version"], r"\d+\.\d+\.\d+")
        if tools.wrk
        else "",
        "nginx " + command_version([str(tools.nginx), "-v"], r"\d+\.\d+\.\d+")
        if tools.nginx
        else "",
    ]
    if tools.go_gateway is not None and (tools.go_gateway / "BUILT_WITH").exists():
        built = (tools.go_gateway / "BUILT_WITH").read_text().splitlines()
        gateway = next((ln for ln in built if ln.startswith("golang-grpc-gateway ")), "")
        others.append(f"Go gateway built from {gateway or 'Debian packages'}")
    lines.append("- " + "; ".join(o for o in others if o))
    return lines


def write(
    out: Path,
    *,
    started: datetime,
    settings: Sequence[str],
    tools: Tools,
    table_md: str,
    bottleneck: str,
    sections: Sequence[tuple[str, str, str]],
    skipped: Mapping[str, str],
    failures: Sequence[str],
    plot_file: str,
) -> None:
    finished = datetime.now(UTC)
    lines = [
        "# Benchmark run",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC, {int((finished - started).total_seconds())} s; written "
        "by `make bench` (tests/perf): measurements, not pass/fail. How the benchmark works: "
        "docs/performance.md.",
        "",
        "## Machine",
        "",
        *machine_lines(tools),
        "",
        "## Settings",
        "",
        *(f"- {s}" for s in settings),
        "",
        "## Results",
        "",
        "Each cell: the median of the runs, and below it the lowest and highest. "
        "÷direct and ÷peer: the gateway's median over the baseline's, measured in the same run "
        "(peer: the Go gateway, or nginx for the proxy paths). other %: CPU used by processes "
        "outside the benchmark, in % of one core. busy: processes near a full core.",
        "",
        table_md,
        "",
        bottleneck,
        "",
    ]
    if plot_file:
        lines += [f"![round trips per second against concurrency]({plot_file})", ""]
    for title, intro, table in sections:
        lines += [f"## {title}", "", intro, "", table, ""]
    if skipped:
        lines += ["## Skipped", "", *(f"- {k}: {v}" for k, v in skipped.items()), ""]
    if failures:
        lines += ["## Failures", "", *(f"- {f}" for f in failures), ""]
    out.write_text("\n".join(lines))
