"""Tracing: the OpenTelemetry set-up, and W3C trace context in and out of every transport.

``tracing_config`` reads the standard ``OTEL_*`` variables from the environment mapping the
CLI passes down; ``start_tracing`` builds a tracer that exports over OTLP/HTTP when an
endpoint is set. Without one there is no SDK, no exporter and no span processor: the
tracer is the API's no-op tracer, whose spans record nothing and only carry the caller's
trace context through.

Trace context (W3C Trace Context: ``traceparent`` and ``tracestate``) comes in from HTTP
headers (``from_headers``), gRPC metadata (``from_metadata``) and the ``context.labels`` of
a message (``take_from_labels``, which also removes them), and goes out to a back-end in
the labels of each message forwarded (``set_labels``): the back-end stream carries many
messages, so a per-call header cannot carry each one's context. A proxied or transcoded
call carries its span's context (``carrier``) in its own metadata instead, and a queued
message keeps its span's (``current_carrier``, read back with ``from_carrier``). The
gateway owns those two label keys: what a client sent is removed before the message is
stored, and what a back-end receives is always the gateway's own.

The spans themselves are in ``gateway.spans``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dialog.v1 import message_pb2
from gateway.config import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_LABELS = (TRACEPARENT, TRACESTATE)
NO_TRACER: Tracer = trace.NoOpTracer()
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
TRACES_PATH = "/v1/traces"
_PROPAGATOR = TraceContextTextMapPropagator()


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TracingConfig:
    """Where spans go. ``endpoint`` empty: nowhere, and tracing costs nothing."""

    service_name: str
    endpoint: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    timeout_ms: int = 10000
    compression: str = "none"
    certificate_file: str = ""
    client_certificate_file: str = ""
    client_key_file: str = ""
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    resource_attributes: tuple[tuple[str, str], ...] = ()


def _pairs(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``key=value,key=value`` with URL-encoded values (the OTLP exporter spec)."""
    pairs = []
    for item in env.get(name, "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{name}: expected key=value pairs separated by commas")
        pairs.append((key.strip(), unquote(value.strip())))
    return tuple(pairs)


def _signal(env: Mapping[str, str], name: str, default: str = "") -> tuple[str, str]:
    """The traces-specific variable if set, else the general one: (variable, value)."""
    specific = name.replace("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_")
    if env.get(specific, "").strip():
        return specific, env[specific].strip()
    return name, env.get(name, "").strip() or default


def _number(variable: str, value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ConfigError(f"{variable}: not a number") from None


def _endpoint(env: Mapping[str, str]) -> str:
    variable, url = _signal(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{variable}: expected an http:// or https:// URL")
    if variable == "OTEL_EXPORTER_OTLP_ENDPOINT":
        # The general endpoint is a base URL; each signal has its own path below it.
        url = url.rstrip("/") + TRACES_PATH
    return url


def tracing_config(env: Mapping[str, str], default_service_name: str) -> TracingConfig:
    """The tracing configuration from the standard ``OTEL_*`` variables in ``env``.

    Export is on when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
    is set, unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. Raises
    ``ConfigError`` naming the variable of an invalid value.
    """
    resource = _pairs(env, "OTEL_RESOURCE_ATTRIBUTES")
    service = env.get("OTEL_SERVICE_NAME", "").strip() or dict(resource).get("service.name")
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter not in ("otlp", "none"):
        raise ConfigError("OTEL_TRACES_EXPORTER: expected otlp or none")
    variable, protocol = _signal(env, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        raise ConfigError(f"{variable}: only http/protobuf is supported")
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if sampler not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: expected one of {', '.join(SAMPLERS)}")
    variable, timeout = _signal(env, "OTEL_EXPORTER_OTLP_TIMEOUT", "10000")
    timeout_ms = int(_number(variable, timeout))
    if timeout_ms <= 0 or timeout_ms != _number(variable, timeout):
        raise ConfigError(f"{variable}: expected a positive whole number of milliseconds")
    ratio = _number("OTEL_TRACES_SAMPLER_ARG", env.get("OTEL_TRACES_SAMPLER_ARG", "") or "1")
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG: expected a ratio between 0 and 1")
    variable, compression = _signal(env, "OTEL_EXPORTER_OTLP_COMPRESSION", "none")
    if compression not in ("gzip", "none"):
        raise ConfigError(f"{variable}: expected gzip or none")
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    headers, _ = _signal(env, "OTEL_EXPORTER_OTLP_HEADERS")
    return TracingConfig(
        service_name=service or default_service_name,
        endpoint="" if disabled or exporter == "none" else _endpoint(env),
        headers=_pairs(env, headers),
        timeout_ms=timeout_ms,
        compression=compression,
        certificate_file=_signal(env, "OTEL_EXPORTER_OTLP_CERTIFICATE")[1],
        client_certificate_file=_signal(env, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")[1],
        client_key_file=_signal(env, "OTEL_EXPORTER_OTLP_CLIENT_KEY")[1],
        sampler=sampler,
        sampler_arg=ratio,
        resource_attributes=resource,
    )


@dataclass(frozen=True)
class Tracing:
    """The process's tracer and, when spans are exported, the SDK provider behind it."""

    tracer: Tracer = NO_TRACER
    provider: TracerProvider | None = None

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocks up to the export timeout)."""
        if self.provider is not None:
            self.provider.shutdown()


def start_tracing(config: TracingConfig) -> Tracing:
    """A tracer exporting to ``config.endpoint`` in batches; the no-op tracer without one.

    The SDK and the exporter are imported only when something is exported.
    """
    if not config.endpoint:
        return Tracing()
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(
        endpoint=config.endpoint,
        headers=dict(config.headers),
        timeout=config.timeout_ms / 1000,
        compression=Compression.Gzip if config.compression == "gzip" else Compression.NoCompression,
        certificate_file=config.certificate_file or None,
        client_certificate_file=config.client_certificate_file or None,
        client_key_file=config.client_key_file or None,
    )
    attributes = {**dict(config.resource_attributes), "service.name": config.service_name}
    provider = TracerProvider(
        sampler=_sampler(config.sampler, config.sampler_arg),
        resource=Resource.create(attributes),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider.get_tracer("dialog-gateway"), provider)


def _sampler(name: str, ratio: float) -> Any:
    from opentelemetry.sdk.trace import sampling

    root = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
    }[name.removeprefix("parentbased_")]
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


# --- propagation -----------------------------------------------------------------------------


def _extract(values: Mapping[str, str]) -> Context:
    """The context of a valid ``traceparent`` in ``values``; an empty context otherwise."""
    if TRACEPARENT not in values:
        return Context()
    return _PROPAGATOR.extract(values, context=Context())


def from_headers(headers: Iterable[tuple[bytes, bytes]]) -> Context:
    """The trace context of ASGI request headers (a new trace when they carry none)."""
    wanted = {name.encode(): name for name in TRACE_LABELS}
    values = {wanted[k.lower()]: v.decode("latin-1") for k, v in headers if k.lower() in wanted}
    return _extract(values)


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context of gRPC invocation metadata (a new trace when it carries none)."""
    values = {
        k: v.decode("latin-1") if isinstance(v, bytes) else v
        for k, v in metadata or ()
        if k in TRACE_LABELS
    }
    return _extract(values)


def has_span(ctx: Context) -> bool:
    """Whether ``ctx`` holds a valid span to continue."""
    return trace.get_current_span(ctx).get_span_context().is_valid


def from_labels(labels: Mapping[str, str]) -> Context:
    """The trace context of a message's labels (a new trace when they carry none)."""
    return _extract({k: labels[k] for k in TRACE_LABELS if k in labels})


def from_carrier(values: Mapping[str, str]) -> Context:
    """The trace context ``carrier`` wrote (a new trace when it holds none): the one a
    queued message keeps."""
    return from_labels(values)


def take_from_labels(msg: message_pb2.Message) -> Context | None:
    """Remove the trace labels from ``msg``; the context they held, if valid."""
    labels = msg.context.labels
    ctx = from_labels(labels)
    for key in TRACE_LABELS:
        labels.pop(key, None)
    return ctx if has_span(ctx) else None


def carrier(span: Span) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of ``span``; empty for an invalid span."""
    values: dict[str, str] = {}
    _PROPAGATOR.inject(values, context=trace.set_span_in_context(span))
    return values


def current_carrier() -> dict[str, str]:
    """``carrier`` of the current span."""
    return carrier(trace.get_current_span())


def set_labels(msg: message_pb2.Message, values: Mapping[str, str]) -> None:
    """Replace whatever trace labels ``msg`` has with ``values``."""
    labels = msg.context.labels
    for key in TRACE_LABELS:
        labels.pop(key, None)
    labels.update(values)


def current_context() -> Context:
    return otel_context.get_current()


@contextlib.contextmanager
def current(span: Span) -> Iterator[Span]:
    """Make ``span`` the current span inside the block; it is not ended on exit."""
    with trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    ):
        yield span


def attach(span: Span) -> object:
    """Make ``span`` current until ``detach`` (for code that cannot use ``current``)."""
    return otel_context.attach(trace.set_span_in_context(span))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


# --- exemplars -------------------------------------------------------------------------------


def exemplar(span: Span) -> dict[str, str] | None:
    """The OpenMetrics exemplar labels of a recorded span: its trace and span ids."""
    if not span.is_recording():
        return None
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return {
        "trace_id": trace.format_trace_id(ctx.trace_id),
        "span_id": trace.format_span_id(ctx.span_id),
    }


def exemplar_of(ctx: Context) -> dict[str, str] | None:
    """The exemplar of the span current in ``ctx``."""
    return exemplar(trace.get_current_span(ctx))
