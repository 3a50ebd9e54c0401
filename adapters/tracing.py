"""Tracing of the reference back-ends: the process's tracer, and a span per handled message.

The gateway sends each message's W3C trace context in its ``context.labels``
(``traceparent``, ``tracestate``): one back-end stream carries many messages, so no call
header can. Each message a back-end handles gets a span, a child of that context, so that
a request's trace runs from the client through the gateway into the back-end. Export is
configured by the same ``OTEL_*`` variables as the gateway's (``gateway.tracing``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from dialog.v1 import message_pb2
from gateway.config import ConfigError
from gateway.spans import BACKEND_METHOD, BACKEND_SERVICE
from gateway.tracing import Tracing, from_labels, start_tracing, tracing_config

DEFAULT_SERVICE_NAME = "dialog-adapter"


def service_name_of(run: Callable[..., Any]) -> str:
    """``dialog-<name>`` for the ``run`` of ``adapters.<name>``; else ``dialog-adapter``."""
    parts = run.__module__.split(".")
    return (
        f"dialog-{parts[1]}"
        if len(parts) > 1 and parts[0] == "adapters"
        else DEFAULT_SERVICE_NAME
    )


def install(env: Mapping[str, str], default_service_name: str) -> Tracing:
    """Make the ``OTEL_*`` settings of ``env`` the process's tracer provider.

    Without an OTLP endpoint nothing is installed and spans cost nothing. Raises
    ``ValueError`` naming a bad variable."""
    try:
        config = tracing_config(env, default_service_name)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    tracing = start_tracing(config)
    if tracing.provider is not None:
        trace.set_tracer_provider(tracing.provider)
    return tracing


def message_span(tracer: Tracer, msg: message_pb2.Message) -> Span:
    """The span of handling ``msg``: a child of the trace context in its labels."""
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": BACKEND_SERVICE,
        "rpc.method": BACKEND_METHOD,
    }
    if msg.id:
        attributes["dialog.message.id"] = msg.id
    return tracer.start_span(
        f"{BACKEND_SERVICE}/{BACKEND_METHOD}",
        context=from_labels(msg.context.labels),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def failed(reason: str) -> None:
    """Mark the current message span as failed, for ``reason`` (a short fixed word)."""
    span = trace.get_current_span()
    span.set_attribute("error.type", reason)
    span.set_status(Status(StatusCode.ERROR))
