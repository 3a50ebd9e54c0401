"""The load generators and reference systems the benchmark needs: found, installed or built.

Everything comes from Debian packages (``apt-get``, when run as root) and is built offline, Go in
GOPATH mode, into ``.tools/bench/``. A tool that cannot be had is recorded with the reason, and
the scenarios that need it are reported as skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_TOOLS = ROOT / ".tools" / "bench"
GO_SOURCES = Path(__file__).resolve().parent / "go"
DEBIAN_GOCODE = Path("/usr/share/gocode")

# Debian packages: the Go toolchain and libraries of the benchmark's Go programs and of the Go
# gateway (grpc-gateway v1 + grpc-websocket-proxy), the HTTP load generators, and nginx.
GO_PACKAGES = (
    "golang-go",
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    "golang-goprotobuf-dev",
    "golang-github-gorilla-websocket-dev",
)
GO_GATEWAY_PACKAGES = (
    "golang-grpc-gateway",
    "golang-github-grpc-ecosystem-grpc-gateway-dev",
    "golang-github-tmc-grpc-websocket-proxy-dev",
    "protoc-gen-go-grpc",
    "protobuf-compiler",
    "golang-google-genproto-dev",
    "patch",
)
COMMAND_PACKAGES = {"wrk": "wrk", "nginx": "nginx"}
BUILD_TIMEOUT_S = 300


@dataclass
class Tools:
    """Paths of what was found or built; ``skipped`` says why anything else is missing."""

    load: Path | None = None  # tests/perf/go load generator
    echo: Path | None = None  # tests/perf/go fast echo back-end
    wrk: Path | None = None
    nginx: Path | None = None
    go_gateway: Path | None = None  # bin/ of the built Go gateway
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _dpkg_installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and "install ok installed" in done.stdout


def apt_install(packages: Sequence[str], tools: Tools) -> bool:
    """Install the missing ``packages`` with apt-get; False (with a note) when that fails."""
    if shutil.which("dpkg-query") is None:
        tools.notes.append("not a Debian system: nothing installed")
        return False
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return True
    if os.geteuid() != 0:
        tools.notes.append(f"not root: did not install {' '.join(missing)}")
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"bench: apt-get install {' '.join(missing)}", flush=True)
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tools.notes.append(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-300:]}")
            return False
    return True


def _command(name: str, tools: Tools) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None and apt_install([COMMAND_PACKAGES[name]], tools):
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        tools.skipped[name] = f"{name} not found and not installable"
    return Path(found) if found else None


def _go_env(gopath: Sequence[Path]) -> dict[str, str]:
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOCACHE": str(BENCH_TOOLS / "gocache"),
        "GOPATH": ":".join(str(p) for p in gopath),
    }


def _newest_mtime(root: Path) -> float:
    return max((p.stat().st_mtime for p in root.rglob("*.go")), default=0.0)


def build_own_programs(tools: Tools) -> None:
    """Build the load generator and the echo back-end from tests/perf/go (when changed)."""
    if not apt_install(GO_PACKAGES, tools) or shutil.which("go") is None:
        tools.skipped["go"] = "no Go toolchain (golang-go): the Go load generator is missing"
        return
    bin_dir = BENCH_TOOLS / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    sources = _newest_mtime(GO_SOURCES)
    for attr, package, binary in (("load", "load", "dialog-load"), ("echo", "echo", "dialog-echo")):
        out = bin_dir / binary
        if not out.exists() or out.stat().st_mtime < sources:
            done = subprocess.run(
                ["go", "build", "-o", str(out), f"dialogbench/{package}"],
                env=_go_env([GO_SOURCES, DEBIAN_GOCODE]),
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                tools.skipped[binary] = f"go build failed: {done.stderr.strip()[-500:]}"
                continue
        setattr(tools, attr, out)


def build_go_gateway(source: Path | None, tools: Tools) -> None:
    """Copy the Go gateway's sources next to the other tools and build them (once)."""
    if source is None or not (source / "build.sh").exists():
        tools.skipped["go gateway"] = (
            "the Go gateway (grpc-gateway + grpc-websocket-proxy) sources were not found; "
            "set GO_GATEWAY_SRC"
        )
        return
    work = BENCH_TOOLS / "go-gateway"
    built = work / "bin" / "echo-gateway"
    if built.exists() and built.stat().st_mtime >= _newest_mtime(source):
        tools.go_gateway = work / "bin"
        return
    if not apt_install(GO_PACKAGES + GO_GATEWAY_PACKAGES, tools):
        tools.skipped["go gateway"] = "its Debian packages could not be installed"
        return
    shutil.rmtree(work, ignore_errors=True)
    # The build writes next to its sources, so it runs on a copy.
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("venv", ".gocache", "bin"))
    print("bench: building the Go gateway (grpc-gateway + grpc-websocket-proxy)", flush=True)
    done = subprocess.run(
        ["sh", "build.sh"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0 or not built.exists():
        tools.skipped["go gateway"] = f"its build failed: {done.stderr.strip()[-500:]}"
        return
    tools.go_gateway = work / "bin"


def prepare(go_gateway_source: Path | None) -> Tools:
    """Find, install or build everything; what is missing lands in ``Tools.skipped``."""
    tools = Tools()
    build_own_programs(tools)
    tools.wrk = _command("wrk", tools)
    tools.nginx = _command("nginx", tools)
    build_go_gateway(go_gateway_source, tools)
    return tools
