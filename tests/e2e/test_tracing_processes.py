"""Real processes started from the CLI export one trace per request over OTLP/HTTP: the
gateway and the chat back-end, configured by the standard ``OTEL_*`` variables only."""

from __future__ import annotations

import random
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.messages import post
from tests.support.otlp import otlp_receiver
from tests.support.stack import Stack

SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT


def test_one_trace_runs_from_the_client_through_both_processes(tmp_path: Path) -> None:
    trace_id, span_id = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    traceparent = f"00-{trace_id:032x}-{span_id:016x}-01"
    with otlp_receiver() as receiver:
        stack = Stack.create(tmp_path)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        try:
            stack.start_backends(**env)
            stack.start_gateway(**env)
            body = {"id": "e1", "content": {"type": "text", "text": "hello"}}
            r = post(stack, stack.token(), body, traceparent=traceparent)
            assert r.status_code == 200, r.text
        finally:
            stack.stop()  # SIGTERM: each process exports its last spans as it exits
        spans = [
            (service, s) for service, s in receiver.spans() if s.trace_id == trace_id.to_bytes(16)
        ]
    by_name = {(service, s.name, s.kind): s for service, s in spans}
    request = by_name["dialog-gateway", "POST /messages", SERVER]
    call = by_name["dialog-gateway", "dialog.backend.v1.Backend/Converse", CLIENT]
    handled = by_name["dialog-chat", "dialog.backend.v1.Backend/Converse", SERVER]
    assert request.parent_span_id == span_id.to_bytes(8)
    assert call.parent_span_id == request.span_id
    assert handled.parent_span_id == call.span_id
    assert len(spans) == 3, [(service, s.name) for service, s in spans]
