"""Idempotency by message id (pure): the key, the body fingerprint and the stored outcome.

A client-chosen ``id`` (or HTTP ``Idempotency-Key``) is the idempotency key of a message.
The store remembers each key with the fingerprint of its body; a repeat with the same body
gets the recorded outcome back instead of being forwarded again, and a repeat with another
body is a conflict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from dialog.backend.v1 import backend_pb2
from dialog.v1 import message_pb2
from gateway.store.records import OutcomeTemplate
from gateway.translate import DELTA

Message = message_pb2.Message


def dedup_key(user: str, message_id: str) -> str:
    """The store key of a user's message id (ids are scoped per user)."""
    return f"{len(user)}:{user}:{message_id}"


def fingerprint(msg: Message) -> str:
    """SHA-256 of what the client said: the message without its server-owned fields."""
    body = Message()
    body.CopyFrom(msg)
    body.ClearField("id")
    body.ClearField("timestamp")
    body.ClearField("seq")
    body.context.reply_to = ""
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What a repeat of a message gets: the stored message and its replies (no deltas)."""

    stored: Message
    replies: tuple[Message, ...]

    def encode(self) -> bytes:
        return backend_pb2.ConverseResponse(
            messages=[self.stored, *self.replies]
        ).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> Outcome:
        messages = backend_pb2.ConverseResponse.FromString(data).messages
        return cls(stored=messages[0], replies=tuple(messages[1:]))

    @classmethod
    def of(cls, stored: Message, replies: Sequence[Message]) -> Outcome:
        return cls(stored=stored, replies=tuple(r for r in replies if r.content.type != DELTA))

    @classmethod
    def template(
        cls, stored: Message, replies: Sequence[Message], final: Message
    ) -> OutcomeTemplate:
        """``Outcome.of(stored, [*replies, final]).encode()`` but for ``final.seq``, which
        the store fills in (``Store.complete``); ``final`` is the final reply (not a delta),
        its seq 0."""
        if final.seq or final.content.type == DELTA:
            raise ValueError("the final reply of an outcome template has no seq and is no delta")
        return OutcomeTemplate(cls.of(stored, replies).encode(), final.SerializeToString())
