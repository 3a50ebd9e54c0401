from __future__ import annotations

import logging

import pytest

from gateway.logs import REDACTED, RedactCredentials, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('"WebSocket /ws?token=abc.def.ghi" 400', "abc.def.ghi"),
        ("GET /events/stream?x=1&access_token=s3cr3t&y=2", "s3cr3t"),
        ("/ws?JWT=eyJ0.eyJ1.sig", "eyJ0.eyJ1.sig"),
        ("authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
    ],
)
def test_credentials_are_redacted(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert REDACTED in out


def test_other_text_is_kept() -> None:
    text = '127.0.0.1:5 - "WebSocket /ws?conversation=7" [accepted]'
    assert redact(text) == text


def test_filter_redacts_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s"',
        ("h", "/ws?token=t0k"),
        None,
    )
    assert RedactCredentials().filter(record)
    assert "t0k" not in record.getMessage()
