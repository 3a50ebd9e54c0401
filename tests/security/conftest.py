"""A gateway with tight limits in front of the recording back-end (tests/support/recorder.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.recorder import received
from tests.support.stack import Process, Stack

ORIGIN = "https://app.example"
LIMITS = {
    "ALLOWED_ORIGINS": ORIGIN,
    "JWT_LEEWAY_S": "0",
    "WS_MESSAGE_RATE_MAX": "5",
    "WS_MESSAGE_RATE_WINDOW_MS": "60000",
    "WS_RATE_VIOLATIONS_MAX": "2",
    "OUTBOUND_QUEUE_MAX": "16",
    "MAX_HEADER_BYTES": "4096",
    "HEAD_TIMEOUT_MS": "500",
    "BODY_TIMEOUT_MS": "500",
    "JSON_MAX_DEPTH": "8",
    "AUTH_TIMEOUT_MS": "500",
    "RATE_LIMIT_MAX": "100000",
    # Off by default; on here, so that the compression bomb meets the size limit.
    "WS_COMPRESSION": "on",
}


@pytest.fixture(scope="package")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.create(Path(tmp_path_factory.mktemp("guarded")))
    try:
        s.start_recorder()
        s.start("tasks", "backend", "tasks")
        s.start_gateway(**LIMITS)
        yield s
    finally:
        s.stop()


class Recorder:
    """What the recording back-end received from one user."""

    def __init__(self, stack: Stack, user: str):
        self.stack = stack
        self.user = user

    def messages(self) -> list[dict[str, str]]:
        return [m for m in received(self.stack.recorder_file) if m["user"] == self.user]


@pytest.fixture
def attacker(guarded: Stack, request: pytest.FixtureRequest) -> Recorder:
    """A fresh user per test; the test asserts what reached the back-end for them."""
    return Recorder(guarded, f"attacker-{request.node.name}"[:120])


# ---------------------------------------------------------------------------------------
# The suite's one-line summary: the cases tried, passed and failed under tests/security/,
# and the server errors the gateways produced meanwhile. An attack must never get a 5xx:
# a non-zero count fails the session even when every test passed (pytest_sessionfinish).
# ---------------------------------------------------------------------------------------

SUITE = "tests/security/"
GRPC_SERVER_ERRORS = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})
TRACEBACK = "Traceback (most recent call last)"
APP_FAILED = "Exception in ASGI application"  # uvicorn: the application raised
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


@dataclass
class ServerErrors:
    """5xx answers counted by the ``guarded`` gateway's metrics (``None``: unreachable), and
    log records with a traceback in the logs of every gateway the suite started."""

    responses: int | None
    logged: int
    logs_with_errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.responses == 0 and self.logged == 0

    def __str__(self) -> str:
        responses = "unknown (gateway unreachable)" if self.responses is None else self.responses
        where = f" (in {', '.join(self.logs_with_errors)})" if self.logs_with_errors else ""
        return f"5xx responses: {responses}, server errors logged: {self.logged}{where}"


@dataclass(eq=False)  # hashable: pytest registers it as a plugin
class SuiteTally:
    """Outcomes of the security test items, one per item (setup, call and teardown)."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    gateway_logs: list[Path] = field(default_factory=list)
    server_errors: ServerErrors | None = None
    _outcome: str = "passed"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Without xdist, an item's reports arrive together: setup, call (and any
        # subtests), teardown. Items of one schemathesis test may share a node id.
        if not report.nodeid.startswith(SUITE):
            return
        if report.when == "setup":
            self._outcome = "passed"
        if report.failed:
            self._outcome = "failed"
        elif report.skipped and self._outcome == "passed":
            self._outcome = "skipped"
        if report.when == "teardown":
            setattr(self, self._outcome, getattr(self, self._outcome) + 1)

    def line(self) -> str:
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        errors = (
            "5xx responses: not measured" if self.server_errors is None else str(self.server_errors)
        )
        return (
            f"security suite: {self.passed + self.failed} cases tried, {self.passed} passed, "
            f"{self.failed} failed{skipped}, {errors}"
        )


TALLY = pytest.StashKey[SuiteTally]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TALLY] = SuiteTally()
    config.pluginmanager.register(config.stash[TALLY], "security-suite-tally")


def five_xx_responses(stack: Stack) -> int | None:
    """Requests the gateway answered with HTTP 5xx or gRPC INTERNAL/UNKNOWN/DATA_LOSS."""
    try:
        with httpx.Client(verify=stack.ssl_context(), timeout=10) as client:
            text = client.get(f"{stack.base_url}/metrics").raise_for_status().text
    except httpx.HTTPError:
        return None
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "dialog_gateway_request_duration_seconds"
            for sample in family.samples
            if sample.name.endswith("_count")
            and (
                sample.labels["code"].startswith("5") or sample.labels["code"] in GRPC_SERVER_ERRORS
            )
        )
    )


def logged_server_errors(log: str) -> int:
    """Log records (a timestamped line and what follows it) that report a server error:
    an application failure or any traceback."""
    starts = [m.start() for m in LOG_RECORD.finditer(log)]
    records = [log[a:b] for a, b in zip([0, *starts], [*starts, len(log)], strict=True)]
    return sum(APP_FAILED in record or TRACEBACK in record for record in records)


@pytest.fixture(scope="session", autouse=True)
def gateway_logs(request: pytest.FixtureRequest) -> Iterator[list[Path]]:
    """The log file of every gateway process the security tests start."""
    logs = request.config.stash[TALLY].gateway_logs
    start = Stack.start

    def recording_start(stack: Stack, name: str, *args: str, **env: str) -> Process:
        proc = start(stack, name, *args, **env)
        if args[:1] == ("serve",):
            logs.append(proc.log_path)
        return proc

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Stack, "start", recording_start)
        yield logs


@pytest.fixture(scope="package", autouse=True)
def server_errors(
    request: pytest.FixtureRequest, guarded: Stack, gateway_logs: list[Path]
) -> Iterator[None]:
    """Measures the server errors at the end of the suite, before ``guarded`` stops."""
    yield
    counts = {
        f"{log.parent.name}/{log.name}": logged_server_errors(log.read_text(errors="replace"))
        for log in gateway_logs
        if log.exists()
    }
    request.config.stash[TALLY].server_errors = ServerErrors(
        responses=five_xx_responses(guarded),
        logged=sum(counts.values()),
        logs_with_errors=tuple(name for name, n in counts.items() if n),
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    errors = session.config.stash[TALLY].server_errors
    if errors is not None and not errors.ok and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    tally = config.stash[TALLY]
    errors = tally.server_errors
    failing = errors is not None and not errors.ok
    terminalreporter.write_line(tally.line(), red=failing or tally.failed > 0, bold=True)
