"""Tracing without I/O: the ``OTEL_*`` configuration, W3C trace context in and out of headers,
metadata and message labels, and the status rules of the spans."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from dialog.v1 import message_pb2
from gateway import spans, tracing
from gateway.config import ConfigError
from gateway.errors import BackendUnavailable, InvalidMessage

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, ""),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            "http://collector:4318/v1/traces",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c/otlp/"}, "https://c/otlp/v1/traces"),
        # The signal's own endpoint is used as it is, and wins.
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:9999/custom",
            },
            "http://b:9999/custom",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, ""),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, ""),
    ],
)
def test_export_is_on_only_with_an_endpoint(env: dict[str, str], endpoint: str) -> None:
    assert tracing.tracing_config(env, "dialog-gateway").endpoint == endpoint


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "dialog-gateway"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource,team=a"}, "from-resource"),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource", "OTEL_SERVICE_NAME": "gw"},
            "gw",
        ),
    ],
)
def test_the_service_name(env: dict[str, str], name: str) -> None:
    assert tracing.tracing_config(env, "dialog-gateway").service_name == name


def test_exporter_settings_are_read_from_the_mapping() -> None:
    config = tracing.tracing_config(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, x=1",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "ca.pem",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        },
        "dialog-chat",
    )
    assert config.headers == (("api-key", "a b"), ("x", "1"))
    assert (config.timeout_ms, config.compression, config.certificate_file) == (
        2500,
        "gzip",
        "ca.pem",
    )
    assert (config.sampler, config.sampler_arg) == ("parentbased_traceidratio", 0.25)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://c"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign"}, "OTEL_EXPORTER_OTLP_HEADERS"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        tracing.tracing_config(env, "dialog-gateway")


def test_without_an_endpoint_there_is_no_provider_and_spans_record_nothing() -> None:
    started = tracing.start_tracing(tracing.tracing_config({}, "dialog-gateway"))
    assert started.provider is None
    assert started.tracer is tracing.NO_TRACER
    span = started.tracer.start_span("x")
    assert not span.is_recording()
    assert tracing.exemplar(span) is None
    started.shutdown()  # nothing to flush


# --- propagation ---------------------------------------------------------------------------


def message(**labels: str) -> message_pb2.Message:
    msg = message_pb2.Message(id="m1")
    msg.context.labels.update(labels)
    return msg


def span_ids(ctx: Any) -> tuple[str, str]:
    span_context = trace.get_current_span(ctx).get_span_context()
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


def test_labels_give_their_context_and_are_removed() -> None:
    msg = message(traceparent=TRACEPARENT, tracestate="v=1", keep="me")
    ctx = tracing.take_from_labels(msg)
    assert ctx is not None and span_ids(ctx) == (TRACE_ID, SPAN_ID)
    assert dict(msg.context.labels) == {"keep": "me"}


@pytest.mark.parametrize("value", ["", "garbage", f"00-{'0' * 32}-{SPAN_ID}-01", "ff-x-y-01"])
def test_an_invalid_traceparent_label_is_removed_and_ignored(value: str) -> None:
    msg = message(traceparent=value, tracestate="v=1")
    assert tracing.take_from_labels(msg) is None
    assert dict(msg.context.labels) == {}


def test_what_the_backend_gets_replaces_any_trace_label() -> None:
    msg = message(traceparent="00-client-planted", tracestate="evil=1", keep="me")
    tracing.set_labels(msg, {"traceparent": TRACEPARENT})
    assert dict(msg.context.labels) == {"traceparent": TRACEPARENT, "keep": "me"}
    tracing.set_labels(msg, {})  # no span: no trace label at all
    assert dict(msg.context.labels) == {"keep": "me"}


def test_headers_and_metadata_carry_the_context() -> None:
    headers = [(b"Traceparent", TRACEPARENT.encode()), (b"authorization", b"Bearer x")]
    assert span_ids(tracing.from_headers(headers)) == (TRACE_ID, SPAN_ID)
    metadata = [("traceparent", TRACEPARENT), ("authorization", "Bearer x")]
    assert span_ids(tracing.from_metadata(metadata)) == (TRACE_ID, SPAN_ID)
    assert not tracing.has_span(tracing.from_headers([]))
    assert not tracing.has_span(tracing.from_metadata(None))


def test_the_noop_tracer_passes_the_parent_through() -> None:
    """With nothing exported, a back-end still gets the client's context."""
    parent = tracing.from_metadata([("traceparent", TRACEPARENT)])
    span = tracing.NO_TRACER.start_span("x", context=parent)
    assert tracing.carrier(span) == {"traceparent": TRACEPARENT}
    assert tracing.carrier(tracing.NO_TRACER.start_span("y")) == {}


# --- span outcomes -------------------------------------------------------------------------


@pytest.fixture
def recorded() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def finished(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


@pytest.mark.parametrize(
    ("code", "client", "error"),
    [
        ("OK", False, False),
        ("INVALID_ARGUMENT", False, False),  # the caller's fault, not the server's
        ("UNAVAILABLE", False, True),
        ("INVALID_ARGUMENT", True, True),  # any failure is one for a client span
    ],
)
def test_rpc_status_rules(
    recorded: tuple[trace.Tracer, InMemorySpanExporter], code: str, client: bool, error: bool
) -> None:
    tracer, exporter = recorded
    spans.end_rpc(tracer.start_span("call"), code, client=client)
    span = finished(exporter)
    attributes = span.attributes or {}
    assert attributes["rpc.grpc.status_code"] == {"OK": 0, "INVALID_ARGUMENT": 3}.get(code, 14)
    assert (span.status.status_code is StatusCode.ERROR) is error
    assert ("error.type" in attributes) is error


@pytest.mark.parametrize(("status", "error"), [(200, False), (404, False), (503, True)])
def test_http_status_rules(
    recorded: tuple[trace.Tracer, InMemorySpanExporter], status: int, error: bool
) -> None:
    tracer, exporter = recorded
    spans.end_http(tracer.start_span("request"), status)
    span = finished(exporter)
    assert (span.attributes or {})["http.response.status_code"] == status
    assert (span.status.status_code is StatusCode.ERROR) is error


@pytest.mark.parametrize(
    ("error", "failed"), [(InvalidMessage("bad"), False), (BackendUnavailable("down"), True)]
)
def test_message_outcome(
    recorded: tuple[trace.Tracer, InMemorySpanExporter], error: Any, failed: bool
) -> None:
    tracer, exporter = recorded
    spans.end_message(tracer.start_span("process /ws"), error)
    span = finished(exporter)
    assert (span.attributes or {})["error.type"] == error.code
    assert (span.status.status_code is StatusCode.ERROR) is failed


def test_exemplars_name_the_recorded_span(
    recorded: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, _ = recorded
    span = tracer.start_span("x")
    ctx = span.get_span_context()
    assert tracing.exemplar(span) == {
        "trace_id": trace.format_trace_id(ctx.trace_id),
        "span_id": trace.format_span_id(ctx.span_id),
    }


def test_http_span_attributes_hold_no_header_or_query(
    recorded: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = recorded
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "https",
        "path": "/events/stream",
        "query_string": b"ticket=secret-ticket",
        "http_version": "1.1",
        "server": ("10.0.0.1", 8080),
        "client": ("192.0.2.7", 51000),
        "headers": [
            (b"host", b"[::1]:8443"),
            (b"authorization", b"Bearer secret-token"),
            (b"traceparent", TRACEPARENT.encode()),
        ],
    }
    spans.end_http(spans.http_server_span(tracer, scope, "/events/stream"), 200)
    span = finished(exporter)
    assert span.name == "GET /events/stream"
    assert span.parent is not None and trace.format_span_id(span.parent.span_id) == SPAN_ID
    attributes = dict(span.attributes or {})
    assert attributes["server.address"] == "::1" and attributes["server.port"] == 8443
    assert attributes["client.address"] == "192.0.2.7"
    assert not any("secret" in str(v) for v in attributes.values())
