"""Single-use tickets (gateway.tickets) and the identity a ticket stands for (gateway.auth)."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth import Identity, decode_identity, encode_identity
from gateway.tickets import TICKET_BYTES, TicketBook, ticket_lifetime_s, well_formed

ALICE = Identity("alice", frozenset({"chat", "tasks"}), 2000.0, "cert:browser")


def test_a_ticket_is_taken_once_before_it_expires() -> None:
    book = TicketBook()
    assert book.put("t", b"alice", expires_at=130, now_s=100)
    assert not book.put("t", b"mallory", expires_at=130, now_s=101)
    assert book.take("t", now_s=129.9) == b"alice"
    assert book.take("t", now_s=129.9) is None
    assert book.put("late", b"alice", expires_at=130, now_s=100)
    assert book.take("late", now_s=130) is None


def test_the_book_is_bounded_and_expired_tickets_make_room() -> None:
    book = TicketBook(max_tickets=2)
    assert book.put("a", b"1", expires_at=10, now_s=0)
    assert book.put("b", b"2", expires_at=20, now_s=0)
    assert not book.put("c", b"3", expires_at=30, now_s=5)
    assert book.put("c", b"3", expires_at=30, now_s=10)  # "a" expired
    assert len(book) == 2


def test_a_shorter_lived_ticket_issued_later_still_expires() -> None:
    book = TicketBook()
    assert book.put("long", b"1", expires_at=100, now_s=0)
    assert book.put("short", b"2", expires_at=5, now_s=1)
    assert book.take("short", now_s=6) is None  # behind a longer one, still checked
    assert book.take("long", now_s=6) == b"1"


@pytest.mark.parametrize(
    ("expires_at", "lifetime"), [(2000.0, 30.0), (1010.0, 10.0), (1000.0, 0.0), (990.0, -10.0)]
)
def test_a_ticket_never_outlives_its_token(expires_at: float, lifetime: float) -> None:
    identity = Identity("alice", frozenset(), expires_at)
    assert ticket_lifetime_s(identity, 30, now_s=1000.0) == lifetime


@pytest.mark.parametrize("value", ["", "x", "A" * 42, "A" * 44, "../../etc/passwd", "A" * 42 + "="])
def test_malformed_tickets_are_recognised(value: str) -> None:
    assert not well_formed(value)


def test_issued_tickets_are_well_formed() -> None:
    assert all(well_formed(secrets.token_urlsafe(TICKET_BYTES)) for _ in range(100))


def test_an_identity_survives_encoding() -> None:
    assert decode_identity(encode_identity(ALICE)) == ALICE


@given(
    subject=st.text(min_size=1),
    scopes=st.frozensets(st.text()),
    expires_at=st.floats(allow_nan=False, allow_infinity=False),
    client=st.text(),
)
def test_every_identity_survives_encoding(
    subject: str, scopes: frozenset[str], expires_at: float, client: str
) -> None:
    identity = Identity(subject, scopes, expires_at, client)
    assert decode_identity(encode_identity(identity)) == identity


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"sub": "", "scopes": [], "exp": 1, "client": ""}',
        b'{"sub": "a", "scopes": "chat", "exp": 1, "client": ""}',
        b'{"sub": "a", "scopes": [], "exp": true, "client": ""}',
        b'{"sub": "a", "scopes": [], "exp": 1}',
        b"\xff",
    ],
)
def test_anything_else_is_not_an_identity(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_identity(data)
