"""What the durable inbound queue keeps for one message (pure, no I/O).

A queued message must be deliverable by any replica, long after the client that
sent it went away: besides the message itself, the entry names the user (the
back-end stream's ``x-dialog-user``, and whose event log gets the replies), the
client certificate identity, the idempotency key whose outcome the delivery
records, and the entity seq it holds. The encoding is one line of JSON followed
by the serialized ``dialog.v1.Message``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dialog.v1 import message_pb2

Message = message_pb2.Message


@dataclass(frozen=True)
class QueuedWork:
    """One message waiting for its back-end.

    ``message`` is what the back-end receives (``seq`` is the entity seq, or 0);
    ``log_seq`` is the seq the message has in the user's event log, so that the
    outcome recorded for ``key`` repeats what the client was acknowledged with.
    ``entity`` is the store's (user-scoped) entity key, empty when unordered.
    """

    user: str
    client: str
    key: str
    entity: str
    log_seq: int
    message: Message

    def encode(self) -> bytes:
        header = {
            "user": self.user,
            "client": self.client,
            "key": self.key,
            "entity": self.entity,
            "log_seq": self.log_seq,
        }
        return json.dumps(header).encode() + b"\n" + self.message.SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> QueuedWork:
        """Raises ``ValueError`` on an entry this build cannot read."""
        head, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("not a queued message")
        try:
            fields = json.loads(head)
            return cls(
                user=str(fields["user"]),
                client=str(fields["client"]),
                key=str(fields["key"]),
                entity=str(fields["entity"]),
                log_seq=int(fields["log_seq"]),
                message=Message.FromString(body),
            )
        # json raises ValueError, a missing field KeyError, protobuf its DecodeError.
        except Exception as exc:
            raise ValueError(f"unreadable queued message: {exc}") from None

    def logged(self) -> Message:
        """The message as the user's event log holds it (the log's seq)."""
        out = Message()
        out.CopyFrom(self.message)
        out.seq = self.log_seq
        return out


def entity_key(user: str, entity: str) -> str:
    """The store key of a user's entity (entities are scoped per user)."""
    return f"{len(user)}:{user}:{entity}"
