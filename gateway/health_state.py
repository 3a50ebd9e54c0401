"""Back-end health as plain data: the pure core of the health monitor.

The shell (``gateway.health``) probes each back-end with ``grpc.health.v1.Health/Check``
and feeds every result to ``HealthTable.record``; it then reads the statuses back to
publish them (Prometheus gauge, the gateway's own gRPC health service, ``/health``).
This module imports no I/O library and takes the clock as an argument.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

OVERALL_SERVICE = ""
"""The service name under which the gRPC health protocol reports the whole server."""


class Status(enum.StrEnum):
    """A back-end's status, spelt as in ``grpc.health.v1.HealthCheckResponse.ServingStatus``."""

    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    UNKNOWN = "UNKNOWN"  # not checked yet; counts as not serving


@dataclass(frozen=True)
class BackendHealth:
    """What the gateway knows about one back-end's health."""

    name: str
    required: bool
    status: Status = Status.UNKNOWN
    last_check_latency_ms: float | None = None
    last_success_at: float | None = None  # unix seconds
    consecutive_failures: int = 0
    checks_total: int = 0
    failures_total: int = 0

    def after_check(self, ok: bool, latency_s: float, now_s: float) -> BackendHealth:
        """The record once a check has ended: ``ok`` is True only for a SERVING reply."""
        latency_ms = max(latency_s, 0.0) * 1000.0
        if ok:
            return replace(
                self,
                status=Status.SERVING,
                last_check_latency_ms=latency_ms,
                last_success_at=now_s,
                consecutive_failures=0,
                checks_total=self.checks_total + 1,
            )
        return replace(
            self,
            status=Status.NOT_SERVING,
            last_check_latency_ms=latency_ms,
            consecutive_failures=self.consecutive_failures + 1,
            checks_total=self.checks_total + 1,
            failures_total=self.failures_total + 1,
        )

    def to_json(self) -> dict[str, Any]:
        """This back-end's entry in the ``/health`` body."""
        latency = self.last_check_latency_ms
        return {
            "status": self.status.value,
            "required": self.required,
            "last_check_latency_ms": None if latency is None else round(latency, 3),
            "last_success_at": iso_utc(self.last_success_at),
            "consecutive_failures": self.consecutive_failures,
            "checks_total": self.checks_total,
            "failures_total": self.failures_total,
        }


def iso_utc(unix_s: float | None) -> str | None:
    """``unix_s`` as ISO-8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.000Z``."""
    if unix_s is None:
        return None
    moment = dt.datetime.fromtimestamp(unix_s, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HealthTable:
    """The health of every configured back-end, keyed by name.

    The gateway is healthy when every *required* back-end is SERVING; optional
    back-ends are reported but never make the gateway unhealthy.
    """

    def __init__(self, required: Mapping[str, bool]) -> None:
        if OVERALL_SERVICE in required:
            raise ValueError("a back-end name must not be empty: '' names the whole gateway")
        self._backends = {
            name: BackendHealth(name=name, required=is_required)
            for name, is_required in required.items()
        }

    def reconfigured(self, required: Mapping[str, bool]) -> HealthTable:
        """A table of the back-ends in ``required`` (a configuration reload): the records of
        back-ends kept carry over, new ones start UNKNOWN."""
        table = HealthTable(required)
        for name, is_required in required.items():
            if name in self._backends:
                table._backends[name] = replace(self._backends[name], required=is_required)
        return table

    def __iter__(self) -> Iterator[BackendHealth]:
        return iter(self._backends.values())

    def __getitem__(self, name: str) -> BackendHealth:
        return self._backends[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._backends)

    def record(self, name: str, ok: bool, latency_s: float, now_s: float) -> BackendHealth:
        """Fold one check result into ``name``'s record and return the new record.

        Raises ``KeyError`` for a back-end that is not in the table.
        """
        updated = self._backends[name].after_check(ok, latency_s, now_s)
        self._backends[name] = updated
        return updated

    def overall_ok(self) -> bool:
        """True when every required back-end is SERVING (UNKNOWN counts as not serving)."""
        return all(b.status is Status.SERVING for b in self._backends.values() if b.required)

    def overall_status(self) -> Status:
        return Status.SERVING if self.overall_ok() else Status.NOT_SERVING

    def to_json(self, breakers: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The ``/health`` body: overall status and one entry per back-end.

        ``breakers`` (by back-end name) adds each back-end's circuit breaker to its
        entry, under ``"breaker"``; it does not change the overall status, which is
        the health checks' verdict.
        """
        backends = {name: b.to_json() for name, b in self._backends.items()}
        for name, breaker in (breakers or {}).items():
            if name in backends:
                backends[name]["breaker"] = dict(breaker)
        return {"status": self.overall_status().value, "backends": backends}
