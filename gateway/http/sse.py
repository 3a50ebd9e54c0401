"""Server-sent events framing (pure). See the HTML standard, "Server-sent events"."""

from __future__ import annotations

HEARTBEAT = b": heartbeat\n\n"


def sse_event(data: str, *, event: str = "", event_id: int | None = None) -> bytes:
    """One event; multi-line data is split into several ``data:`` lines."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def last_event_id(header: str | None) -> int:
    """The seq to resume after, from a ``Last-Event-ID`` header (0 when absent or invalid)."""
    if header is None:
        return 0
    try:
        value = int(header.strip())
    except ValueError:
        return 0
    return max(value, 0)
