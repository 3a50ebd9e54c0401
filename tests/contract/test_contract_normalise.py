"""The normalisation of contract observations (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.normalise import normalise

ID_A = "7f2c0a9e5d3b4c1f8a6e2d9b0c4f1a3e"
ID_B = "0c4f1a3e7f2c0a9e5d3b4c1f8a6e2d9b"


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        # Ids are numbered in order of first appearance; equal ids stay equal.
        (
            [{"id": ID_A}, {"id": ID_B, "context": {"reply_to": ID_A}}],
            [{"id": "<id:1>"}, {"id": "<id:2>", "context": {"reply_to": "<id:1>"}}],
        ),
        # Seqs become their rank: order and equality kept, values not.
        (
            [{"seq": "41"}, {"seq": "40"}, {"seq": "41"}],
            [{"seq": "<seq:2>"}, {"seq": "<seq:1>"}, {"seq": "<seq:2>"}],
        ),
        # A server-sent event's id is a seq; last_seq (a Struct number) too.
        (
            [
                {"event": "message", "id": "7", "data": {"seq": "7"}},
                {"content": {"data": {"last_seq": 9.0}}},
            ],
            [
                {"event": "message", "id": "<seq:1>", "data": {"seq": "<seq:1>"}},
                {"content": {"data": {"last_seq": "<seq:2>"}}},
            ],
        ),
        # A seq of another JSON type is left as it is, so that the change shows.
        ([{"seq": 7}], [{"seq": 7}]),
        # Timestamps, serial ids and the user.
        (
            {
                "timestamp": "2026-11-30T03:21:08.382Z",
                "data": {"id": "12", "owner": "u-1"},
                "context": {"entity": "12"},
            },
            {
                "timestamp": "<timestamp>",
                "data": {"id": "<serial:1>", "owner": "<user>"},
                "context": {"entity": "<serial:1>"},
            },
        ),
        # Client-chosen ids and entities stay.
        (
            {"id": "m1", "context": {"entity": "groceries"}},
            {"id": "m1", "context": {"entity": "groceries"}},
        ),
        # Free text of errors; the codes stay.
        (
            [
                {"error": {"code": "invalid_argument", "message": "bad"}},
                {
                    "content": {
                        "type": "error",
                        "text": "bad",
                        "data": {"code": "x", "message": "bad"},
                    }
                },
                {"code": "INTERNAL", "details": "boom"},
                {"code": 4401, "reason": ""},
            ],
            [
                {"error": {"code": "invalid_argument", "message": "<text>"}},
                {
                    "content": {
                        "type": "error",
                        "text": "<text>",
                        "data": {"code": "x", "message": "<text>"},
                    }
                },
                {"code": "INTERNAL", "details": "<text>"},
                {"code": 4401, "reason": ""},
            ],
        ),
        # The text of other messages is content, not free text.
        (
            {"content": {"type": "text", "text": "bad"}},
            {"content": {"type": "text", "text": "bad"}},
        ),
    ],
)
def test_normalise(observed: Any, expected: Any) -> None:
    assert normalise(observed, user="u-1") == expected
