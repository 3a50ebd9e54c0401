"""The echo assistant (pure, no I/O): the text comes back word by word."""

from __future__ import annotations

import re
from collections.abc import Iterator

from adapters.envelope import DELTA, TEXT, Message, reply

# One word with the whitespace after it; leading whitespace joins the first
# word; text that is only whitespace is one piece.
_PIECE = re.compile(r"\s*\S+\s*|\s+")


def split_words(text: str) -> list[str]:
    """Pieces of ``text`` that hold one word each and join back to ``text``."""
    return _PIECE.findall(text)


def echo_replies(text: str) -> Iterator[Message]:
    """One ``delta`` reply per word, then a final ``text`` reply with all of it."""
    for piece in split_words(text):
        yield reply(DELTA, piece)
    yield reply(TEXT, text)
