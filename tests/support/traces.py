"""What tracing tests share: a client-side span, as a client would send it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from opentelemetry.trace import format_span_id, format_trace_id


@dataclass(frozen=True)
class ClientSpan:
    """A span the client says it is in: what it sends as ``traceparent``."""

    trace_id: int
    span_id: int

    @classmethod
    def new(cls) -> ClientSpan:
        return cls(random.getrandbits(128) or 1, random.getrandbits(64) or 1)

    @property
    def traceparent(self) -> str:
        return f"00-{format_trace_id(self.trace_id)}-{format_span_id(self.span_id)}-01"
