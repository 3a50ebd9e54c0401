"""Channels to the back-ends: ``BackendPool``.

``BackendPool`` keeps, for the whole process, one mutual-TLS channel per
back-end with its circuit breaker (``gateway.breaker``) and retry budget
(``gateway.retrybudget``), and publishes their decisions as metrics. It opens
each ``BackendStream`` (one ``Backend.Converse`` call, ``gateway.backend_stream``)
on its back-end's current channel, and ends the streams of a channel that a
configuration reload replaced or removed (``BackendChanges``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from gateway import metrics, tracing
from gateway.backend_stream import BackendStream
from gateway.breaker import (
    GAUGE_VALUE,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    Permit,
)
from gateway.config import BackendConfig, RoutesConfig
from gateway.discovery import OUTLIER_POLICY, OutlierPolicy, balances, channel_target
from gateway.errors import BackendRemoved, BackendUnavailable
from gateway.retrybudget import RetryBudget, RetryBudgetPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendChanges:
    """How the back-ends of a new configuration differ from the current ones, by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    # Any field differs (target, certificate paths, timeout, ...), or the contents of its
    # certificate files (``BackendPool.apply``).
    changed: tuple[str, ...] = ()

    @classmethod
    def between(cls, current: Mapping[str, BackendConfig], routes: RoutesConfig) -> BackendChanges:
        new = {b.name: b for b in routes.backends}
        return cls(
            added=tuple(name for name in new if name not in current),
            removed=tuple(name for name in current if name not in new),
            changed=tuple(name for name in new if name in current and current[name] != new[name]),
        )

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return "; ".join(parts) or "no back-end changed"


def _read(base_dir: Path, path: str) -> bytes:
    p = Path(path)
    return (p if p.is_absolute() else base_dir / p).read_bytes()


def channel_options(
    backend: BackendConfig, max_message_bytes: int, outlier: OutlierPolicy = OUTLIER_POLICY
) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Reconnect quickly so that retries after a restart find the back-end.
        ("grpc.initial_reconnect_backoff_ms", backend.retry.initial_backoff_ms),
        ("grpc.min_reconnect_backoff_ms", backend.retry.initial_backoff_ms),
        ("grpc.max_reconnect_backoff_ms", max(backend.retry.max_backoff_ms, 1000)),
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 10000),
    ]
    if backend.server_name:  # the TLS name of every instance
        options.append(("grpc.ssl_target_name_override", backend.server_name))
    if balances(backend.target):
        # Several instances: gRPC balances the calls itself (gateway.discovery).
        options.append(("grpc.service_config", outlier.service_config_json()))
    return options


class BackendPool:
    """One mutual-TLS channel, circuit breaker and retry budget per named back-end.

    ``clock`` (monotonic seconds) times the breakers and budgets; the
    ``breaker_*`` and ``retry_budget_*`` arguments are the gateway settings of
    the same names. ``tracer`` makes the span of each call to a back-end. ``outlier``
    says when gRPC ejects an instance of a multi-address back-end (its timers run
    inside gRPC, on its own clock).
    """

    def __init__(
        self,
        routes: RoutesConfig,
        *,
        max_message_bytes: int,
        base_dir: Path,
        breaker_failures: int = 5,
        breaker_open_ms: int = 5000,
        retry_budget_ratio: float = 0.2,
        retry_budget_min_per_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        tracer: Tracer = tracing.NO_TRACER,
        outlier: OutlierPolicy = OUTLIER_POLICY,
    ):
        self.configs: Mapping[str, BackendConfig] = {b.name: b for b in routes.backends}
        self._outlier = outlier
        self.channels: dict[str, grpc.aio.Channel] = {}
        self._clock = clock
        self.tracer = tracer
        self._base_dir = base_dir
        self._breaker_failures = breaker_failures
        self._breaker_open_ms = breaker_open_ms
        self._budget = RetryBudgetPolicy(ratio=retry_budget_ratio, min_per_s=retry_budget_min_per_s)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._streams: dict[str, weakref.WeakSet[BackendStream]] = {}
        self._removed: dict[str, str] = {}  # back-end name -> why its calls end
        self._retiring: set[asyncio.Task[None]] = set()
        # The CA, key and certificate each channel was opened with: a reload that finds other
        # bytes in those files (rotated certificates) opens a new channel.
        self._material: dict[str, tuple[bytes, bytes, bytes]] = {}
        for b in routes.backends:
            self._install(b, self._open_channel(b, max_message_bytes))

    def _read_material(self, b: BackendConfig) -> tuple[bytes, bytes, bytes]:
        """``b``'s CA, key and certificate; raises ``OSError`` when a file is unreadable."""
        return (
            _read(self._base_dir, b.ca_file),
            _read(self._base_dir, b.key_file),
            _read(self._base_dir, b.cert_file),
        )

    def _open_channel(self, b: BackendConfig, max_message_bytes: int) -> grpc.aio.Channel:
        """A new mutual-TLS channel to ``b``; raises ``OSError`` when a file is unreadable."""
        ca, key, cert = self._material[b.name] = self._read_material(b)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        return grpc.aio.secure_channel(
            channel_target(b.target),
            credentials,
            options=channel_options(b, max_message_bytes, self._outlier),
        )

    def _install(self, b: BackendConfig, channel: grpc.aio.Channel) -> None:
        """Make ``channel`` the channel of ``b``, with a fresh breaker and retry budget."""
        policy = BreakerPolicy(
            failures=self._breaker_failures,
            open_s=self._breaker_open_ms / 1000,
            trial_timeout_s=b.timeout_ms / 1000,
        )
        self.channels[b.name] = channel
        self._breakers[b.name] = CircuitBreaker(policy)
        self._budgets[b.name] = RetryBudget(self._budget)
        self._streams[b.name] = weakref.WeakSet()
        self._removed.pop(b.name, None)
        metrics.BREAKER_STATE.labels(backend=b.name).set(GAUGE_VALUE[BreakerState.CLOSED])

    def apply(self, routes: RoutesConfig, *, max_message_bytes: int) -> BackendChanges:
        """Take the back-ends of ``routes`` (a configuration reload), all or nothing.

        An added back-end gets a channel. A changed one (any field differs) gets a new
        channel at once; calls in flight on the old one have its ``timeout_ms`` to finish
        before it closes, and each connection's stream moves to the new channel with its
        next message (``stream_is_current``). A removed one's streams end at once, its
        calls failing with ``BackendRemoved``, and its channel closes. Raises ``OSError``
        (nothing applied) when a certificate file of a new channel cannot be read.
        """
        changes = BackendChanges.between(self.configs, routes)
        rotated = tuple(
            b.name
            for b in routes.backends
            if b.name in self.configs
            and b.name not in changes.changed
            and self._read_material(b) != self._material.get(b.name)
        )
        changes = dataclasses.replace(changes, changed=(*changes.changed, *rotated))
        current_material = dict(self._material)
        opened: dict[str, grpc.aio.Channel] = {}
        try:
            for name in (*changes.added, *changes.changed):
                opened[name] = self._open_channel(routes.backend(name), max_message_bytes)
        except OSError:
            for channel in opened.values():
                self._retire(channel, [], 0.0, "")
            self._material = current_material
            raise
        old_configs, self.configs = self.configs, {b.name: b for b in routes.backends}
        for name in changes.changed:
            streams = list(self._streams[name])
            grace_s = old_configs[name].timeout_ms / 1000
            reason = f"back-end {name!r} was replaced by a configuration reload"
            self._retire(self.channels[name], streams, grace_s, reason)
        for name in (*changes.added, *changes.changed):
            self._install(routes.backend(name), opened[name])
        for name in changes.removed:
            reason = f"back-end {name!r} was removed by a configuration reload"
            self._removed[name] = reason
            self._retire(self.channels.pop(name), list(self._streams.pop(name)), 0.0, reason)
            del self._breakers[name], self._budgets[name], self._material[name]
            with contextlib.suppress(KeyError):
                metrics.BREAKER_STATE.remove(name)
        return changes

    def _retire(
        self, channel: grpc.aio.Channel, streams: list[BackendStream], grace_s: float, reason: str
    ) -> None:
        """Close ``channel`` after ``grace_s``, first ending ``streams`` with ``reason``."""

        async def retire() -> None:
            if grace_s:
                await asyncio.sleep(grace_s)
            for stream in streams:
                stream.end(grpc.StatusCode.UNAVAILABLE, reason)
            await channel.close(grace=None)

        task = asyncio.create_task(retire(), name="upstream-retire-channel")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def removal(self, backend: str) -> BackendRemoved | None:
        """The error of a call to ``backend`` when a reload removed it, else None."""
        reason = self._removed.get(backend)
        return BackendRemoved(reason) if reason is not None else None

    def config(self, backend: str) -> BackendConfig:
        """``backend``'s configuration; ``BackendRemoved`` when a reload removed it."""
        config = self.configs.get(backend)
        if config is None:
            raise self.removal(backend) or BackendUnavailable(f"no back-end {backend!r}")
        return config

    def open_stream(
        self, backend: str, user: str, *, client: str = "", reply_queue_max: int
    ) -> BackendStream:
        """A new ``Backend.Converse`` stream on ``backend``'s current channel."""
        self.config(backend)
        stream = BackendStream(
            self.channels[backend],
            backend,
            user,
            client=client,
            reply_queue_max=reply_queue_max,
        )
        self._streams[backend].add(stream)
        metrics.BACKEND_STREAMS.labels(backend=backend).inc()
        return stream

    def stream_is_current(self, stream: BackendStream) -> bool:
        """Whether ``stream`` runs on its back-end's current channel (not one a reload
        replaced or removed)."""
        return self.channels.get(stream.backend) is stream.channel

    def accepting(self, backend: str) -> bool:
        """Whether a call to ``backend`` would be let through now: False while its
        breaker is open, or half-open with its one trial call in flight. Reserves
        nothing (the trial goes to the next call): use it to decide whether to try
        the back-end at all, e.g. before delivering queued messages."""
        breaker = self._breakers.get(backend)
        if breaker is None:  # removed by a reload: its queued messages wait in the store
            return False
        accepting = breaker.accepting(self._clock())
        self._publish(backend)
        return accepting

    def breaker_state(self, backend: str) -> BreakerState:
        """The state of ``backend``'s circuit breaker now."""
        state = self._breakers[backend].state(self._clock())
        self._publish(backend)
        return state

    def breakers_json(self) -> dict[str, dict[str, Any]]:
        """Every back-end's breaker as shown in ``/health``, by back-end name."""
        now = self._clock()
        states = {name: breaker.to_json(now) for name, breaker in self._breakers.items()}
        for name in self._breakers:
            self._publish(name)
        return states

    def admit(self, backend: str) -> Permit:
        """Let one call to ``backend`` through, or raise ``BackendUnavailable`` at once,
        without touching the network, while its breaker refuses calls.

        Every permit must be given back with ``settle``."""
        self.config(backend)  # raises BackendRemoved for a back-end a reload removed
        permit = self._breakers[backend].admit(self._clock())
        self._publish(backend)
        if permit is None:
            raise BackendUnavailable(f"back-end {backend!r} is unavailable (circuit open)")
        return permit

    def settle(self, backend: str, permit: Permit, outcome: Outcome) -> None:
        """Report how the call admitted with ``permit`` ended (nothing, for a back-end
        that a reload removed meanwhile)."""
        breaker = self._breakers.get(backend)
        if breaker is None:
            return
        breaker.settle(permit, outcome, self._clock())
        self._publish(backend)

    def record_request(self, backend: str) -> None:
        """Count a first attempt to ``backend`` in its retry budget."""
        budget = self._budgets.get(backend)
        if budget is not None:
            budget.record_request(self._clock())

    def allow_retry(self, backend: str) -> bool:
        """Spend one retry of ``backend``'s budget and return True, or return False
        when retries would exceed it. Either way the decision is counted."""
        budget = self._budgets.get(backend)
        allowed = budget is not None and budget.try_retry(self._clock())
        outcome = "allowed" if allowed else "denied"
        metrics.RETRIES.labels(backend=backend, outcome=outcome).inc()
        return allowed

    def _publish(self, backend: str) -> None:
        for change in self._breakers[backend].transitions():
            metrics.BREAKER_STATE.labels(backend=backend).set(GAUGE_VALUE[change.after])
            metrics.BREAKER_TRANSITIONS.labels(backend=backend, state=change.after.value).inc()
            level = logging.WARNING if change.after is BreakerState.OPEN else logging.INFO
            log.log(
                level,
                "circuit breaker of %s is %s (was %s): %s",
                backend,
                change.after.value,
                change.before.value,
                change.reason,
            )

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for channel in self.channels.values():
            await channel.close(grace=None)
