"""The OpenAI chat-completions streaming wire format (pure, no I/O).

A streamed completion is a ``text/event-stream`` (HTML Living Standard,
section 9.2 "Server-sent events"): events separated by blank lines, each
``data:`` line adding to the event's data. Every event's data is one JSON
``chat.completion.chunk`` whose ``choices[0].delta.content`` is the next piece
of text, and the stream ends with the literal data ``[DONE]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


class MalformedStream(ValueError):
    """The stream does not follow the chat-completions wire format."""


def request_body(model: str, prompt: str) -> dict[str, Any]:
    """The JSON body of a streamed chat completion for one user message."""
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}


@dataclass
class SseDecoder:
    """Turns the lines of an event stream into the data of each event."""

    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> str | None:
        """Feed one line (without its line ending); returns an event's data when one ends."""
        if line == "":
            if not self._data:
                return None
            data = "\n".join(self._data)
            self._data.clear()
            return data
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None  # "event", "id" and "retry" do not matter here


@dataclass(frozen=True)
class Chunk:
    """What one event says: a piece of text, and whether the answer is over."""

    text: str
    finished: bool


def parse_event(data: str) -> Chunk:
    """Decode one event's data; ``[DONE]`` is a finished, empty chunk."""
    if data.strip() == DONE:
        return Chunk("", True)
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise MalformedStream("chunk is not JSON") from exc
    if not isinstance(chunk, dict):
        raise MalformedStream("chunk is not a JSON object")
    if "error" in chunk:
        raise MalformedStream("the stream reported an error")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise MalformedStream("chunk has no choices list")
    if not choices:
        return Chunk("", False)  # e.g. a usage-only chunk
    choice = choices[0]
    if not isinstance(choice, dict):
        raise MalformedStream("choice is not a JSON object")
    delta = choice.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is not None and not isinstance(content, str):
        raise MalformedStream("delta content is not a string")
    return Chunk(content or "", choice.get("finish_reason") is not None)
