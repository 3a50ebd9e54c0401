"""The probe back-end (tests/support/probe.py) with response metadata: ``Echo`` and
``Count`` answer with headers and trailers, some of which the tests allowlist
(``FORWARDED``) and some not (``HIDDEN``).

- ``Echo``: the headers ``HEADERS`` (two values of ``x-probe-note``, a ``-bin`` one), then
  ``count`` more ``x-probe-many`` headers; the trailers ``TRAILERS``. ``text`` "long" adds a
  ``x-probe-note`` too long to pass.
- ``Count``: the header ``x-probe-note: stream`` and the trailer ``x-probe-trailer: end``.
- ``Fail``: as the probe's (``x-probe-trailer-bin`` and ``grpc-status-details-bin``).

Run as a process (``python -m tests.support.metadata_probe``) like the probe: on
``PROBE_PORT`` with the certificate ``PROBE_CERT`` (default ``chat``) of ``PROBE_PKI``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tests.support.probe import (
    BACKEND_SERVICE,
    SERVED_BY,
    SERVICE,
    TRAILER_BIN,
    TRAILER_BIN_VALUE,
    Probe,
    ProbeTypes,
    RunningProbe,
    _with_own_services,
    serve_until_stopped,
    start_secure,
)

NOTE = "x-probe-note"
DATA_BIN = "x-probe-data-bin"
DATA_BIN_VALUE = b"\x00\xff\xfe meta"
MANY = "x-probe-many"
TRAILER = "x-probe-trailer"
HIDDEN = ("x-probe-hidden", "x-probe-hidden-trailer")
HEADERS: tuple[tuple[str, str | bytes], ...] = (
    (NOTE, "first"),
    (NOTE, "second"),
    (DATA_BIN, DATA_BIN_VALUE),
    (HIDDEN[0], "not for clients"),
)
TRAILERS: tuple[tuple[str, str | bytes], ...] = (
    (TRAILER, "done"),
    (TRAILER_BIN, TRAILER_BIN_VALUE),
    (HIDDEN[1], "not for clients"),
)
# The names a back-end's forward_metadata lists for these tests.
FORWARDED = (SERVED_BY, NOTE, DATA_BIN, MANY, TRAILER, TRAILER_BIN)


class MetadataProbe(Probe):
    """A probe whose ``Echo`` and ``Count`` send response metadata."""

    async def echo(self, request: Any, context: Any) -> Any:
        self.calls.append("Probe/Echo")
        headers = [(SERVED_BY, self.name), *HEADERS]
        headers += [(MANY, str(i)) for i in range(request.count)]
        if request.text == "long":
            headers.append((NOTE, "x" * 5000))
        await context.send_initial_metadata(tuple(headers))
        context.set_trailing_metadata(TRAILERS)
        return self._reply(request.text, context)

    async def count(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls.append("Probe/Count")
        await context.send_initial_metadata(((SERVED_BY, self.name), (NOTE, "stream")))
        context.set_trailing_metadata(((TRAILER, "end"),))
        for i in range(request.count):
            yield self.types.Reply(text=str(i))


async def start_metadata_probe(pki: Path, *, cert: str = "chat", port: int = 0) -> RunningProbe:
    """Serve a ``MetadataProbe`` on 127.0.0.1:``port`` (mutual TLS, health, reflection)."""
    types = ProbeTypes.build()
    probe = MetadataProbe("metadata-probe", types)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(probe.handlers())
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = (SERVICE, BACKEND_SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names, pool=_with_own_services(types.pool))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    return await start_secure(server, health, probe, pki, cert=cert, port=port)


if __name__ == "__main__":
    asyncio.run(serve_until_stopped(start_metadata_probe))
