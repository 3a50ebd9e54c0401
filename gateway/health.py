"""The health monitor: probes every back-end over its mTLS channel and publishes the result.

Each round calls ``grpc.health.v1.Health/Check`` (service ``""``) on every back-end at
once, each call with a deadline of ``timeout_ms``, and feeds the results to the pure
``HealthTable``. It then publishes the table: the ``dialog_gateway_backend_up`` gauge,
and the gateway's own gRPC health service (one service per back-end name, and the
whole gateway under ``""``, SERVING iff every required back-end is SERVING).

Rounds start every ``interval_ms`` (or as soon as the previous one ends, if it took
longer), so a back-end that stops answering shows NOT_SERVING within
``interval_ms + timeout_ms``. The gateway owns the channels and the servicer; the
monitor only uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

# grpc-stubs does not declare ``health.aio`` (an alias of ``_async``); the module exists.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from gateway import metrics
from gateway.health_state import OVERALL_SERVICE, BackendHealth, HealthTable, Status

log = logging.getLogger(__name__)

CHECK_METHOD = "/grpc.health.v1.Health/Check"
# The gRPC deadline ends each call; this margin only guards against a call that
# outlives its deadline (e.g. a channel stuck while closing).
_DEADLINE_MARGIN_S = 0.5

_PB_STATUS: Mapping[Status, Any] = {
    Status.SERVING: health_pb2.HealthCheckResponse.SERVING,
    Status.NOT_SERVING: health_pb2.HealthCheckResponse.NOT_SERVING,
    Status.UNKNOWN: health_pb2.HealthCheckResponse.UNKNOWN,
}


@dataclass(frozen=True)
class _CheckEnded:
    """One probe's outcome, before it is recorded."""

    name: str
    ok: bool
    latency_s: float
    reason: str


class HealthMonitor:
    """Checks every back-end periodically and publishes their health.

    ``channels`` and ``required`` must name the same back-ends. ``clock`` gives unix
    seconds for ``last_success_at``; latencies use the event loop's monotonic clock.
    """

    def __init__(
        self,
        channels: Mapping[str, grpc.aio.Channel],
        required: Mapping[str, bool],
        *,
        interval_ms: int,
        timeout_ms: int,
        servicer: health_aio.HealthServicer | None = None,
        clock: Callable[[], float] = time.time,
        ready: Callable[[], bool] = lambda: True,
        store: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """``ready`` is a further condition of overall health (the key set has loaded);
        ``store`` pings the message store each round (a store that does not answer makes
        the gateway NOT_SERVING: it can accept nothing)."""
        if set(channels) != set(required):
            raise ValueError(
                f"health: channels {sorted(channels)} and required {sorted(required)} differ"
            )
        if interval_ms <= 0 or timeout_ms <= 0:
            raise ValueError("health: interval_ms and timeout_ms must be positive")
        self._table = HealthTable({name: required[name] for name in channels})
        self._checks = {name: self._check_of(channel) for name, channel in channels.items()}
        self._interval_s = interval_ms / 1000
        self._timeout_s = timeout_ms / 1000
        self._servicer = servicer
        self._clock = clock
        self._ready = ready
        self._store = store
        self._store_status = Status.UNKNOWN

    def follow(
        self, channels: Mapping[str, grpc.aio.Channel], required: Mapping[str, bool]
    ) -> None:
        """Check these back-ends from now on (a configuration reload); records of back-ends
        kept carry over. Call it while ``run`` is not running."""
        for name in self._table.names():
            if name not in channels:
                with contextlib.suppress(KeyError):
                    metrics.BACKEND_UP.remove(name)
        self._table = self._table.reconfigured({name: required[name] for name in channels})
        self._checks = {name: self._check_of(channel) for name, channel in channels.items()}

    @staticmethod
    def _check_of(channel: grpc.aio.Channel) -> Any:
        return channel.unary_unary(
            CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    async def run(self) -> None:
        """Check all back-ends every ``interval_ms`` until cancelled.

        Publishes the initial state first: before the first check every back-end
        is UNKNOWN and the gateway is NOT_SERVING.
        """
        loop = asyncio.get_running_loop()
        await self._publish()
        while True:
            started = loop.time()
            await self.check_once()
            await asyncio.sleep(max(0.0, self._interval_s - (loop.time() - started)))

    async def check_once(self) -> None:
        """One round: probe every back-end concurrently, record the results, publish."""
        async with asyncio.TaskGroup() as group:
            probes = [
                group.create_task(self._probe(name), name=f"health-check-{name}")
                for name in self._checks
            ]
            store = group.create_task(self._probe_store(), name="health-check-store")
        for probe in probes:
            self._record(probe.result())
        self._record_store(store.result())
        await self._publish()

    def snapshot(self, breakers: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The ``/health`` JSON body (see ``HealthTable.to_json``), with each back-end's
        circuit breaker when ``breakers`` is given (``BackendPool.breakers_json``)."""
        body = self._table.to_json(breakers)
        if self._store is not None:
            body["store"] = {"status": self._store_status.value}
            if self._store_status is not Status.SERVING:
                body["status"] = Status.NOT_SERVING.value
        return body

    def overall_ok(self) -> bool:
        """True when every required back-end and the store are SERVING and ``ready()``
        holds."""
        store_ok = self._store is None or self._store_status is Status.SERVING
        return self._table.overall_ok() and store_ok and self._ready()

    def backend(self, name: str) -> BackendHealth:
        """The current record of one back-end; ``KeyError`` if unknown."""
        return self._table[name]

    async def _probe(self, name: str) -> _CheckEnded:
        loop = asyncio.get_running_loop()
        started = loop.time()
        request = health_pb2.HealthCheckRequest(service=OVERALL_SERVICE)
        try:
            async with asyncio.timeout(self._timeout_s + _DEADLINE_MARGIN_S):
                reply = await self._checks[name](request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            reason = f"check failed: {exc.code().name}"
        except grpc.aio.UsageError:
            reason = "check failed: channel closed"
        except TimeoutError:
            reason = "check failed: no reply before the deadline"
        else:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            ok = reply.status == health_pb2.HealthCheckResponse.SERVING
            return _CheckEnded(name, ok, loop.time() - started, f"reported {status}")
        return _CheckEnded(name, False, loop.time() - started, reason)

    async def _probe_store(self) -> Status:
        if self._store is None:
            return Status.UNKNOWN
        try:
            async with asyncio.timeout(self._timeout_s):
                ok = await self._store()
        except TimeoutError:
            ok = False
        return Status.SERVING if ok else Status.NOT_SERVING

    def _record_store(self, status: Status) -> None:
        if self._store is None or status is self._store_status:
            return
        if status is Status.SERVING:
            log.info("message store is SERVING (was %s)", self._store_status.value)
        else:
            log.warning("message store is NOT_SERVING: it does not answer")
        self._store_status = status
        metrics.STORE_UP.set(1 if status is Status.SERVING else 0)

    def _record(self, ended: _CheckEnded) -> None:
        before = self._table[ended.name].status
        after = self._table.record(ended.name, ended.ok, ended.latency_s, self._clock()).status
        if after is before:
            log.debug("backend %s %s", ended.name, ended.reason)
        elif after is Status.SERVING:
            log.info("backend %s is SERVING (was %s)", ended.name, before.value)
        else:
            log.warning("backend %s is %s: %s", ended.name, after.value, ended.reason)

    async def _publish(self) -> None:
        for backend in self._table:
            up = 1 if backend.status is Status.SERVING else 0
            metrics.BACKEND_UP.labels(backend=backend.name).set(up)
        if self._servicer is None:
            return
        statuses = {b.name: b.status for b in self._table}
        statuses[OVERALL_SERVICE] = Status.SERVING if self.overall_ok() else Status.NOT_SERVING
        for service, status in statuses.items():
            # The asyncio servicer's set() is a coroutine; the threaded one's is not.
            result = self._servicer.set(service, _PB_STATUS[status])
            if inspect.isawaitable(result):
                await result
