"""Span export over OTLP/HTTP to a real receiver on loopback, and nothing at all without the
``OTEL_EXPORTER_OTLP_*`` variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import tracing
from tests.support.otlp import Receiver, otlp_receiver

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as running:
        yield running


def test_spans_go_to_the_otlp_endpoint(receiver: Receiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s%20ecret",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    started = tracing.start_tracing(tracing.tracing_config(env, "dialog-gateway"))
    assert started.provider is not None
    started.tracer.start_span("POST /messages").end()
    started.shutdown()  # flushes the batch
    [request] = receiver.requests
    assert request.path == "/v1/traces"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-api-key"] == "s ecret"
    [resource_spans] = request.body.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "dialog-gateway"
    assert resource["deployment.environment"] == "test"
    names = [s.name for scope in resource_spans.scope_spans for s in scope.spans]
    assert names == ["POST /messages"]


NO_EXPORT_PROBE = """
import json, sys
from opentelemetry import trace
from adapters import tracing as adapter_tracing
from gateway import tracing
started = tracing.start_tracing(tracing.tracing_config(dict(OTEL_SERVICE_NAME="x"), "gw"))
parent = tracing.from_metadata([("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")])
span = started.tracer.start_span("call", context=parent)
adapter = adapter_tracing.install({}, "dialog-chat")
print(json.dumps({
    "provider": started.provider is not None or adapter.provider is not None,
    "recording": span.is_recording(),
    "carrier": tracing.carrier(span),
    "global": type(trace.get_tracer_provider()).__name__,
    "loaded": sorted(m for m in sys.modules if m.startswith(
        ("opentelemetry.sdk", "opentelemetry.exporter", "requests"))),
}))
"""


def test_without_otlp_variables_nothing_is_created_or_exported() -> None:
    """A fresh interpreter: no provider, no SDK, no exporter, no HTTP client are even
    imported, and spans record nothing, yet they carry the caller's context through."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", NO_EXPORT_PROBE],
        cwd=ROOT,
        env={**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    probe = json.loads(result.stdout)
    assert probe["provider"] is False
    assert probe["recording"] is False
    assert probe["global"] == "ProxyTracerProvider"  # the adapters installed nothing either
    assert probe["loaded"] == []
    assert probe["carrier"] == {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
