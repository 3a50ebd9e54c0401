"""The OpenAI chat-completions streaming wire format, decoded without I/O."""

from __future__ import annotations

import json

import pytest

from adapters.chat.openai_wire import (
    Chunk,
    MalformedStream,
    SseDecoder,
    parse_event,
    request_body,
)


def chunk(delta: dict[str, object], finish_reason: str | None = None) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def test_request_body_asks_for_a_stream() -> None:
    assert request_body("llama3", "hi") == {
        "model": "llama3",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_decoder_yields_one_data_per_event() -> None:
    decoder = SseDecoder()
    lines = [
        ": keep-alive",
        "",
        "event: message",
        "data: one",
        "",
        "data:two",
        "",
        "data: a",
        "data: b",
        "id: 3",
        "retry: 10",
        "",
    ]
    events = [data for line in lines if (data := decoder.feed(line)) is not None]
    assert events == ["one", "two", "a\nb"]


def test_decoder_keeps_an_unfinished_event() -> None:
    decoder = SseDecoder()
    assert decoder.feed("data: partial") is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (chunk({"role": "assistant", "content": "Hel"}), Chunk("Hel", False)),
        (chunk({"content": ""}), Chunk("", False)),
        (chunk({"content": None}), Chunk("", False)),
        (chunk({}), Chunk("", False)),
        (chunk({}, "stop"), Chunk("", True)),
        (chunk({"content": "!"}, "length"), Chunk("!", True)),
        (json.dumps({"choices": [], "usage": {"total_tokens": 3}}), Chunk("", False)),
        ("[DONE]", Chunk("", True)),
    ],
)
def test_parse_event(data: str, expected: Chunk) -> None:
    assert parse_event(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"error": {"message": "overloaded"}}),
        json.dumps({"object": "chat.completion.chunk"}),
        json.dumps({"choices": ["x"]}),
        json.dumps({"choices": [{"delta": {"content": 5}}]}),
    ],
)
def test_parse_event_rejects_malformed_chunks(data: str) -> None:
    with pytest.raises(MalformedStream):
        parse_event(data)
