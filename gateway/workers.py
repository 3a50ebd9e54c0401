"""The supervisor of ``WORKERS`` > 1: gateway worker processes on the same ports.

Each worker is a fresh interpreter (``python -m gateway serve`` with ``WORKER_ENV`` set to
its index), never a fork: gRPC's threads do not survive a fork. The workers bind the same
ports (``SO_REUSEPORT``, ``gateway.listeners``) and share their state through Redis.

The supervisor forwards SIGTERM and SIGINT (each worker drains as a single gateway does)
and SIGHUP (reload), and returns once every worker has exited: 0, or 1 when one failed. A
worker that dies unexpectedly is started again after a back-off; when workers keep dying
(``gateway.worker_restarts``) the supervisor stops the others and returns 1. Each worker
keeps its metrics in ``PROMETHEUS_MULTIPROC_DIR``, a fresh directory removed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping

from prometheus_client import multiprocess

from gateway.config import GatewayConfig
from gateway.worker_restarts import RestartPolicy, StopWorkers

log = logging.getLogger(__name__)
WORKER_ENV = "DIALOG_GATEWAY_WORKER"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker drains within DRAIN_TIMEOUT_S; this covers its start-up and shutdown.
STOP_MARGIN_S = 5.0
# How a worker ends that gets the stop signal before it handles signals itself: killed
# by SIGTERM, or by SIGINT (KeyboardInterrupt: the CLI's 130, or the signal itself).
STOPPED_WHILE_STARTING = frozenset({-signal.SIGTERM, -signal.SIGINT, 130})


def supervise(config: GatewayConfig, env: Mapping[str, str]) -> int:
    """Run ``config.workers`` workers until they have all exited; the exit code."""
    supervisor = Supervisor(
        config.workers, env, stop_timeout_s=config.drain_timeout_s + STOP_MARGIN_S
    )
    return asyncio.run(supervisor.run())


class Supervisor:
    """Starts, restarts and stops the worker processes; ``run`` owns them."""

    def __init__(
        self,
        count: int,
        env: Mapping[str, str],
        *,
        stop_timeout_s: float,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._env = dict(env)
        self._stop_timeout_s = stop_timeout_s
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self._workers: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._failed = False

    async def run(self) -> int:
        """Start the workers and keep them running until a stop signal, or until they
        keep dying; return 0 when every worker stopped cleanly, else 1."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        with tempfile.TemporaryDirectory(prefix="dialog-gateway-metrics-") as metrics_dir:
            env = {**self._env, METRICS_DIR_ENV: metrics_dir}
            log.info(
                "supervisor (pid %d): starting %d workers (metrics in %s)",
                os.getpid(), self._count, metrics_dir,
            )  # fmt: skip
            async with asyncio.TaskGroup() as tasks:
                for index in range(self._count):
                    tasks.create_task(self._keep(index, env), name=f"worker-{index}")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info(
            "supervisor: every worker has exited%s", " (not all cleanly)" if self._failed else ""
        )
        return 1 if self._failed else 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop every worker with ``sig`` (SIGTERM or SIGINT: they drain)."""
        if not self._stopping.is_set():
            log.info("supervisor: %s: stopping the workers", signal.Signals(sig).name)
            self._stopping.set()
        self._forward(sig)

    def _forward(self, sig: int) -> None:
        for index, proc in self._workers.items():
            if proc.returncode is None:
                name = signal.Signals(sig).name
                log.info("supervisor: %s to worker %d (pid %d)", name, index, proc.pid)
                proc.send_signal(sig)

    async def _keep(self, index: int, env: Mapping[str, str]) -> None:
        """Run worker ``index``, and again after each unexpected death, until stopped."""
        delay_s = 0.0
        while not self._stopping.is_set():
            if delay_s and await _set_within(self._stopping, delay_s):
                return
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", env={**env, WORKER_ENV: str(index)}
            )
            self._workers[index] = proc
            log.info("supervisor: worker %d started (pid %d)", index, proc.pid)
            if self._stopping.is_set():  # the stop signal came while it was starting
                proc.send_signal(signal.SIGTERM)
            code = await self._exit_code(index, proc)
            del self._workers[index]
            # Its live gauges stop counting (prometheus_client's multiprocess mode).
            multiprocess.mark_process_dead(proc.pid, env[METRICS_DIR_ENV])  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                self._stopped(index, proc.pid, code)
                return
            decision = self._policy.worker_died(self._clock())
            if isinstance(decision, StopWorkers):
                log.error(
                    "supervisor: worker %d (pid %d) exited with %s; giving up: %s",
                    index, proc.pid, _describe(code), decision.reason,
                )  # fmt: skip
                self._failed = True
                self.stop(signal.SIGTERM)
                return
            delay_s = decision.delay_s
            log.error(
                "supervisor: worker %d (pid %d) exited unexpectedly with %s; "
                "starting it again in %.1f s",
                index, proc.pid, _describe(code), delay_s,
            )  # fmt: skip

    def _stopped(self, index: int, pid: int, code: int) -> None:
        if code == 0:
            log.info("supervisor: worker %d (pid %d) stopped", index, pid)
        elif code in STOPPED_WHILE_STARTING:
            log.info("supervisor: worker %d (pid %d) stopped while it started", index, pid)
        else:
            log.error("supervisor: worker %d (pid %d) stopped with %s", index, pid, _describe(code))
            self._failed = True

    async def _exit_code(self, index: int, proc: asyncio.subprocess.Process) -> int:
        """Wait for the worker to exit; once the workers stop, kill it if it is still
        running ``stop_timeout_s`` later."""
        exited = asyncio.create_task(proc.wait(), name=f"worker-{index}-exit")
        stopping = asyncio.create_task(self._stopping.wait(), name=f"worker-{index}-stopping")
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                done, _ = await asyncio.wait({exited}, timeout=self._stop_timeout_s)
                if not done:
                    log.warning(
                        "supervisor: worker %d (pid %d) did not stop within %g s: killing it",
                        index, proc.pid, self._stop_timeout_s,
                    )  # fmt: skip
                    proc.kill()
            return await exited
        finally:
            exited.cancel()
            stopping.cancel()


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether ``event`` is set within ``timeout_s``."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


def _describe(code: int) -> str:
    """An exit code as people read it: ``code 1``, or ``SIGKILL`` for -9."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
