"""The echo assistant's word splitting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.chat.echo import echo_replies, split_words


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("hello world", ["hello ", "world"]),
        ("hello  brave\nworld\n", ["hello  ", "brave\n", "world\n"]),
        ("  leading", ["  leading"]),
        ("one", ["one"]),
        ("   ", ["   "]),
        ("", []),
        ("héllo wörld", ["héllo ", "wörld"]),
    ],
)
def test_split_words(text: str, pieces: list[str]) -> None:
    assert split_words(text) == pieces


@given(st.text())
def test_pieces_join_back_and_hold_one_word_each(text: str) -> None:
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert all(len(piece.split()) <= 1 for piece in pieces)
    assert len(pieces) == max(len(text.split()), 1 if text else 0)


def test_echo_replies_are_deltas_then_the_text() -> None:
    replies = list(echo_replies("to be"))
    assert [(m.content.type, m.content.text) for m in replies] == [
        ("delta", "to "),
        ("delta", "be"),
        ("text", "to be"),
    ]
